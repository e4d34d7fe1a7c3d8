"""Shared fixtures (one tiny random TinyGiant checkpoint per session, built through
`tinygiant.hub.assemble.from_components`) and the test tiers: the markers every test gets from what it runs."""

import importlib.util
import inspect
import os
import re
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the Hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from modeling_tinygiant import TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor
from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

torch.set_num_threads(2)

@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): two are slower
    than one for models this small, and much slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def processor(tiny_dir):
    return TinyGiantProcessor.from_pretrained(tiny_dir, trust_remote_code=True)


@pytest.fixture(scope="session")
def model(tiny_dir):
    """A shared model in eval mode; tests that train or change it load their own copy."""
    return TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval()


# ----------------------------------------------------------------------------- test tiers

# Markers are given here, by one rule, so that a new test file is sorted without anyone listing it: a test is marked
# by what the source of its function, of the fixtures it uses, and of its module's functions that those call names
# (MARKS). `slow` (left out of the quick loop, `pytest -m "not slow"`) is what starts vLLM, a browser, another Python
# process (its imports alone take seconds on 2 cores; two training processes among them), the demo, an ONNX export,
# llama.cpp or transformers' own suite (SLOW_MARKS), and the tests listed in MEASURED_SLOW.
MARKS = {
    "vllm": re.compile(r'\b(VllmServer|vllm_executable|serve_command)\b|"--engine",\s*"vllm"'),
    "browser": re.compile(r"\bwebdriver\b"),
    "ddp": re.compile(r'--multi_gpu|"--num_processes",\s*"[2-9]|\btorchrun\b'),
    "demo": re.compile(r'\b(sft|grpo)\.main\(|"demo",\s*"--'),  # in process (`tinygiant.demo.sft`, `.grpo`), or the CLI
    "subprocess": re.compile(r"\bsys\.executable\b"),
    "onnx": re.compile(r'\bexport_onnx\(|"export",\s*"onnx"'),  # every ONNX variant of a checkpoint: minutes
    "llamacpp": re.compile(r"\b(LlamaCppDecoder|export_gguf)\b|\bllama_cpp="),
}
# Marks read from a whole test module: one that asks whether espeak-ng is there would pass either way without it;
# transformers' own model tests (thousands of subtests).
MODULE_MARKS = {"espeak": re.compile(r"\bspeech_available\("),
                "transformers_suite": re.compile(r"class \w+\([^)]*\bModelTesterMixin\b")}
SLOW_MARKS = {"vllm", "browser", "ddp", "demo", "subprocess", "onnx", "transformers_suite", "llamacpp"}
# Tests that start nothing above but took 4 s or more each in `pytest -m "not slow" --durations=0` on 2 shared cores
# (about 2 s on 2 idle ones), or 3 s of CPU or more (user + system, with children): generating through the pipeline
# or with several models, training steps, int8 comparisons.
MEASURED_SLOW = {
    "test_ablation": ["test_protocol_resumes_and_writes_the_report"],
    "test_chat": ["test_audio_cache_skips_the_encoders_and_keeps_greedy_tokens",
                  "test_pipeline_continues_a_conversation_and_reuses_the_clip"],
    "test_cli": ["test_ask_with_int8_weights_answers_like_the_full_precision_model"],
    "test_conformance": ["test_activation_checkpointing_recomputes_the_language_model_and_keeps_the_gradients",
                         "test_peft_prefix_tuning_changes_the_loss_and_trains",
                         "test_trl_sft_trainer_trains_each_peft_method"],
    "test_deprecations": ["test_a_training_run_through_train_sft", "test_forward_generate_and_the_pipeline"],
    "test_fast_path": ["test_generate_with_static_cache_gives_the_plain_greedy_tokens",
                       "test_int8_inference_never_dequantises_a_weight_to_read_it",
                       "test_load_int8_gives_the_model_quantise_after_load_gives",
                       "test_quantize_int8_replaces_linears_and_mostly_agrees_with_float",
                       "test_w8a8_model_agrees_with_float_and_generation_matches_its_fast_path"],
    "test_feature_cache": ["test_a_damaged_file_is_detected_and_recomputed_with_a_warning",
                           "test_cached_features_give_the_same_loss_logits_and_generation",
                           "test_cached_features_train_the_same_gradients",
                           "test_collator_recomputes_a_damaged_cache_file",
                           "test_hits_misses_keys_and_fingerprint",
                           "test_whisper_padding_switch_is_shared_by_the_cache_and_inference"],
    "test_grpo": ["test_audio_reaches_generation_and_the_logprob_passes_and_silence_changes_them",
                  "test_encoders_run_once_per_clip_per_step_and_the_feature_cache_skips_them",
                  "test_resumed_run_continues_from_its_checkpoint"],
    "test_mmar_empty_choices": ["test_generation_answers_all_four"],
    "test_mmar_generation": ["test_generation_scores_reports_and_score_only_agree"],
    "test_model": ["test_ablation_switches_skip_their_computation",
                   "test_audio_changes_the_output_and_the_instruction_matters",
                   "test_batched_generation_equals_one_by_one",
                   "test_expanded_generation_keeps_each_audio_with_its_sample", "test_forward_on_short_and_long_audio",
                   "test_gradients_reach_projector_and_llm_never_encoders"],
    "test_pipeline": ["test_finished_generation_is_parsed_and_streams",
                      "test_inputs_of_every_kind_give_the_same_answer",
                      "test_int8_pipeline_answers_and_is_compared_with_float",
                      "test_w8a8_pipeline_quantises_activations_and_names_a_bad_mode"],
    "test_plain_trl_sft_trainer": ["test_sft_trainer_trains_projector_and_llm_not_encoders"],
    "test_publish": ["test_space_folder_runs_the_app_with_its_examples"],
    "test_reliability": ["test_two_threads_on_one_pipeline_serialise_and_get_their_own_answers"],
    "test_rubrics": ["test_concurrency_and_qps_are_bounded",
                     "test_hand_computed_scores_every_grouping_retries_and_errors"],
    "test_scene_probes": ["test_audio_embeddings_follow_the_question_only_with_the_intent_query",
                          "test_probe_reads_a_separable_label_and_not_noise"],
    "test_train_sft": ["test_feature_cache_dir_gives_the_same_losses_and_a_filled_cache_skips_the_encoders",
                       "test_lora_trains_adapters_and_projector_then_merges",
                       "test_save_adapter_keeps_the_lora_adapter_unmerged_beside_the_merged_checkpoint",
                       "test_sft_steps_train_projector_and_llm_only",
                       "test_two_learning_rates_are_separate_param_groups"],
    "test_vllm": ["test_question_reaches_the_audio_embeddings"],
}


def source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def code_of(item: pytest.Item) -> str:
    """The source a test runs: its function, its fixtures, and its module's functions that those call by name."""
    fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
    text = "\n".join(source(f) for f in [item.function, *fixtures])
    called = [f for name, f in vars(item.module).items() if inspect.isfunction(f)
              and f.__module__ == item.module.__name__ and re.search(rf"\b{re.escape(name)}\(", text)]
    return "\n".join([text, *map(source, called)])


def marks_of(item: pytest.Item) -> set[str]:
    text, module = code_of(item), source(item.module)
    marks = {mark for mark, pattern in MARKS.items() if pattern.search(text)}
    marks |= {mark for mark, pattern in MODULE_MARKS.items() if pattern.search(module)}
    # A test run once per backend, "vllm" among them (e.g. the web app in process and on a vLLM server), needs vLLM
    # in that run only.
    callspec = getattr(item, "callspec", None)
    backends = {name: value for name, value in (callspec.params.items() if callspec else ())
                if "vllm" in backend_choices(item, name)}
    if backends:
        marks.discard("vllm")
        marks |= {"vllm"} if "vllm" in backends.values() else set()
    return marks


def backend_choices(item: pytest.Item, name: str) -> list:
    """The values a parametrized fixture or argument `name` takes, where they are strings."""
    definitions = item._fixtureinfo.name2fixturedefs.get(name) or ()
    values = list(definitions[-1].params or ()) if definitions else [item.callspec.params[name]]
    return [value for value in values if isinstance(value, str)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = marks_of(item)
        for mark in sorted(marks):
            item.add_marker(mark)
        if marks & SLOW_MARKS or item.originalname in MEASURED_SLOW.get(item.module.__name__, ()):
            item.add_marker("slow")


def missing_vllm() -> str | None:
    from tinygiant.serving.vllm_server import vllm_executable

    try:
        vllm_executable()
    except FileNotFoundError as error:
        return str(error)  # it names install.sh
    return None


def missing_chromium() -> str | None:
    missing = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found: install.sh installs chromium and chromium-driver (as root)" if missing \
        else None


def missing_llama_cpp() -> str | None:
    missing = [name for name in ("llama_cpp", "gguf") if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed: install.sh installs them (the `test` extra)" if missing else None


def missing_onnx() -> str | None:
    missing = [name for name in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    torch_free = Path(__file__).resolve().parents[1] / ".venv-onnx" / "bin" / "python"
    missing += [] if torch_free.is_file() else [".venv-onnx/"]
    return f"{', '.join(missing)} not installed: install.sh installs them" if missing else None


def missing_espeak() -> str | None:
    from tinygiant.demo.synthetic import speech_available

    return None if speech_available() else "espeak-ng not found: install.sh installs it (as root)"


# A test whose tool is missing fails (as an error naming install.sh); it is never skipped. The demo's data has speech.
TOOL_CHECKS = {"vllm": [missing_vllm], "browser": [missing_chromium], "llamacpp": [missing_llama_cpp],
               "onnx": [missing_onnx], "espeak": [missing_espeak], "demo": [missing_espeak]}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test is set up (a module's server, say)."""
    for mark, checks in TOOL_CHECKS.items():
        if item.get_closest_marker(mark):
            for problem in filter(None, (check() for check in checks)):
                pytest.fail(f"{item.name} needs {mark}: {problem}", pytrace=False)
