"""train_sft.py: collator masks and truncation, bad rows, SFTTrainer steps, the feature cache, LoRA, 2-process DDP,
kill-and-resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import with_audio_tokens
from safetensors.torch import load_file
from transformers import TrainerCallback

import train_sft
from modeling_tinygiant import TinyGiantForConditionalGeneration, TinyGiantModel
from parsing_tinygiant import SYSTEM_PROMPT, cota_to_messages
from processing_tinygiant import TinyGiantProcessor
from tinygiant.demo.synthetic import make_synthetic_dataset
from tinygiant.training.data import BadRow, TinyGiantCollator, load_cota
from tinygiant.training.trainer import gradient_accumulation_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Fast, deterministic settings shared by every training run below.
FAST = ["--use_cpu", "--bf16", "false", "--activation_checkpointing", "false", "--disable_tqdm", "true",
        "--report_to", "none", "--logging_steps", "1", "--learning_rate", "1e-3", "--projector_learning_rate", "1e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny32(tiny_dir, tmp_path_factory):
    """The session's tiny checkpoint with 32 audio tokens per clip instead of 300 (faster training runs)."""
    return with_audio_tokens(tiny_dir, tmp_path_factory.mktemp("tiny32"), 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(out, n_train=12, n_heldout=2, seed=0, tasks=["count_beeps", "higher_tone"])
    return out


def rows_of(data, n=None):
    """Training rows exactly as train_sft loads them (audio cast to undecoded {"bytes", "path"})."""
    ds = load_cota([str(data / "train.jsonl")])
    return [ds[i] for i in range(n or len(ds))]


def run(args, **kwargs):
    return train_sft.main(*train_sft.parse_args([*FAST, *args]), **kwargs)


def tensors(path):
    return load_file(str(Path(path) / "model.safetensors"))


# ----------------------------------------------------------------------------- collator


def test_cota_markup_maps_to_reasoning_and_content():
    messages = cota_to_messages(
        "<audio>How many beeps?\n(a) one\n(b) two",
        "<THINK>\n<PLANNING>\nCount.</PLANNING>\n<SUMMARY>\nTwo.</SUMMARY>\n</THINK>\n"
        "<RESPONSE>\nThe answer is (b) two.</RESPONSE>",
        system_prompt="sys",
    )
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[1]["content"] == [{"type": "audio"}, {"type": "text", "text": "How many beeps?\n(a) one\n(b) two"}]
    assert messages[2]["reasoning_content"] == "<PLANNING>\nCount.</PLANNING>\n<SUMMARY>\nTwo.</SUMMARY>"
    assert messages[2]["content"] == "The answer is (b) two."


def test_labels_cover_exactly_the_assistant_turn(processor, data):
    collator = TinyGiantCollator(processor, system_prompt=SYSTEM_PROMPT)
    rows = rows_of(data, 3)
    batch = collator(rows)
    tok = processor.tokenizer
    for i, row in enumerate(rows):
        ids, labels, attention = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        text = processor.apply_chat_template(
            cota_to_messages(row["user"], row["assistant"], SYSTEM_PROMPT), tokenize=False
        )
        assistant = text.split("<|im_start|>assistant\n")[1].rstrip("\n")  # ends with <|im_end|>
        trained = labels != -100
        assert tok.decode(ids[trained]) == assistant  # every assistant token, end-of-turn included
        assert torch.equal(labels[trained], ids[trained])  # unshifted
        first, last = int(trained.nonzero()[0]), int(trained.nonzero()[-1])
        assert not trained[:first].any() and trained[first:last + 1].all()  # system and user turns never trained
        assert ids[last] == tok.convert_tokens_to_ids("<|im_end|>") and last >= int(attention.sum()) - 2
        assert not trained[ids == processor.audio_token_id].any()
        assert (ids == processor.audio_token_id).sum() == processor.num_audio_tokens
        assert attention[: int(attention.sum())].all()  # right padding
    assert batch["num_skipped_rows"].item() == 0


def test_truncation_cuts_text_only_never_the_audio(processor, model, data):
    row = rows_of(data, 1)[0]
    full = TinyGiantCollator(processor, system_prompt=None)([row])
    n_text = int(((full["input_ids"] != processor.audio_token_id) & full["attention_mask"].bool()).sum())
    limit = n_text - 10
    cut = TinyGiantCollator(processor, max_text_length=limit, system_prompt=None)([row])
    ids = cut["input_ids"][0]
    assert int((ids != processor.audio_token_id).sum()) == limit
    assert int((ids == processor.audio_token_id).sum()) == processor.num_audio_tokens
    assert torch.equal(ids, full["input_ids"][0, : len(ids)])  # the end was cut, nothing else
    assert torch.equal(cut["labels"][0], full["labels"][0, : len(ids)]) and (cut["labels"][0] != -100).any()
    # A limit below the prompt would cut into the audio: the row is skipped instead.
    prompt_limit = TinyGiantCollator(processor, max_text_length=3, system_prompt=None)
    with pytest.raises(BadRow, match="over the limit"):
        prompt_limit.encode_row(row)
    cut.pop("num_skipped_rows")
    with torch.no_grad():
        assert torch.isfinite(model(**cut).loss)  # placeholders and audio embeddings still match


def test_bad_rows_are_skipped_counted_and_replaced(processor, data, tmp_path, caplog):
    good = rows_of(data, 2)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    bad = [
        {**good[0], "audio": None},
        {**good[0], "audio": {"bytes": None, "path": str(tmp_path / "missing.wav")}},
        {**good[0], "audio": {"bytes": b"\x00\x01garbage", "path": None}},
        {**good[0], "audio": {"bytes": None, "path": str(garbage)}},
        {**good[0], "assistant": "   "},
    ]
    collator = TinyGiantCollator(processor, system_prompt=None, fallback_rows=bad + good)
    with caplog.at_level("WARNING", logger="tinygiant.training.data"):
        batch = collator([bad[0], good[0], bad[1], good[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["num_skipped_rows"].item() == 2
    assert "skipping a bad row" in caplog.text
    # A batch of nothing but bad rows falls back to a good row of the dataset instead of crashing.
    fresh = TinyGiantCollator(processor, system_prompt=None, fallback_rows=bad + good)
    batch = fresh(bad)
    assert batch["input_ids"].shape[0] == 1 and batch["num_skipped_rows"].item() == len(bad)
    assert fresh.num_skipped == len(bad)  # rows passed over while searching for a fallback are not training rows
    # Only a dataset without a single usable row is an error, and it says so.
    with pytest.raises(RuntimeError, match="none of the first"):
        TinyGiantCollator(processor, system_prompt=None, fallback_rows=bad)(bad)


def test_local_files_accept_float_lists_bytes_and_relative_paths(data, tmp_path):
    import pandas as pd

    rows = rows_of(data, 2)
    wave, rate = soundfile.read(rows[0]["audio"]["path"], dtype="float32")
    pd.DataFrame([
        {"user": rows[0]["user"], "assistant": rows[0]["assistant"],
         "audio": {"bytes": open(rows[0]["audio"]["path"], "rb").read(), "path": None}},
    ]).to_parquet(tmp_path / "bytes.parquet")
    ds = load_cota([str(data / "train.jsonl"), str(tmp_path / "bytes.parquet")])
    assert len(ds) == 13 and Path(ds[0]["audio"]["path"]).is_file() and ds[12]["audio"]["bytes"]
    floats = {"user": rows[0]["user"], "assistant": rows[0]["assistant"], "audio": np.zeros(16000).tolist()}
    with open(tmp_path / "floats.jsonl", "w") as f:
        f.write(json.dumps(floats) + "\n")
    ds = load_cota([str(tmp_path / "floats.jsonl")])
    assert len(ds[0]["audio"]) == 16000  # a bare list stays a list, read as 16 kHz by the collator


def test_effective_batch_must_divide():
    assert gradient_accumulation_for(32, 4, 2) == 4
    with pytest.raises(ValueError, match="not a multiple of per-device batch 3 x 2"):
        gradient_accumulation_for(32, 3, 2)


# ----------------------------------------------------------------------------- training


def test_sft_steps_train_projector_and_llm_only(tiny32, data, tmp_path):
    before = tensors(tiny32)
    trainer, metrics = run(["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"),
                            "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "2",
                            "--effective_batch_size", "4", "--max_steps", "3", "--save_strategy", "no"])
    assert trainer.state.global_step == 3 and metrics["skipped_rows"] == 0
    groups = trainer.optimizer.param_groups
    assert sorted({g["initial_lr"] for g in groups}) == [1e-3]  # both groups given 1e-3 on the command line
    after = tensors(tmp_path / "run")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.projector.") for k in changed)
    assert any(k.startswith("model.language_model.layers.") for k in changed)
    encoders = [k for k in before if k.split(".")[1] in ("whisper_encoder", "htsat_encoder", "clap_encoder")]
    assert encoders and not changed & set(encoders)  # frozen encoders bit-identical
    m = trainer.model
    for encoder in m.model.audio_encoders():
        assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    # The loss depends on the audio: silence gives a different loss on the same rows.
    processor = TinyGiantProcessor.from_pretrained(tiny32, trust_remote_code=True)
    rows = rows_of(data, 4)
    losses = []
    for zero in (False, True):
        batch = TinyGiantCollator(processor, zero_audio=zero)(rows)
        batch.pop("num_skipped_rows")
        with torch.no_grad():
            losses.append(m.eval()(**batch).loss.item())
    assert abs(losses[0] - losses[1]) > 1e-4


def test_feature_cache_dir_gives_the_same_losses_and_a_filled_cache_skips_the_encoders(tiny32, data, tmp_path,
                                                                                      monkeypatch):
    encoder_calls = []
    encode_audio = TinyGiantModel.encode_audio

    def counting_encode_audio(self, *args, **kwargs):
        encoder_calls.append(len(args[2]))  # audios encoded in this call
        return encode_audio(self, *args, **kwargs)

    monkeypatch.setattr(TinyGiantModel, "encode_audio", counting_encode_audio)
    common = ["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"), "--seed", "5",
              "--per_device_train_batch_size", "2", "--effective_batch_size", "2", "--max_steps", "3",
              "--save_strategy", "no"]
    cache = ["--feature_cache_dir", str(tmp_path / "features")]
    runs = {}
    for name, extra in (("live", []), ("filling", cache), ("cached", cache)):
        encoder_calls.clear()
        trainer, metrics = run([*common, "--output_dir", str(tmp_path / name), *extra])
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        runs[name] = (losses, metrics["feature_cache_hits"], metrics["feature_cache_misses"], sum(encoder_calls))
    assert len(runs["live"][0]) == 3
    assert runs["live"][1:] == (0, 0, 6)  # no cache: the encoders run on every row of every step
    assert runs["filling"][1:3] == (0, 6)
    # Each clip encoded once, by the collator, and stored (accelerate collates one batch ahead: it is stored too).
    assert runs["filling"][3] == len(list((tmp_path / "features").rglob("*.safetensors"))) >= 6
    assert runs["cached"][1:] == (6, 0, 0)  # all read from disk: the encoders never ran
    # The same features reach the projector either way, so the losses are exactly the same.
    assert runs["live"][0] == runs["filling"][0] == runs["cached"][0]


def test_two_learning_rates_are_separate_param_groups(tiny32, data, tmp_path):
    trainer, _ = run(["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"),
                      "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "4",
                      "--effective_batch_size", "4", "--max_steps", "1", "--save_strategy", "no",
                      "--learning_rate", "5e-5", "--projector_learning_rate", "1e-4"])
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        is_projector = {".projector." in names[id(p)] for p in group["params"]}
        assert len(is_projector) == 1
        assert group["initial_lr"] == (1e-4 if is_projector.pop() else 5e-5)


class RecordTrainable(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_trains_adapters_and_projector_then_merges(tiny32, data, tmp_path):
    before = tensors(tiny32)
    record = RecordTrainable()
    trainer, _ = run(["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"),
                      "--output_dir", str(tmp_path / "lora"), "--per_device_train_batch_size", "2",
                      "--effective_batch_size", "2", "--max_steps", "3", "--save_strategy", "no",
                      "--use_peft", "--lora_r", "4", "--lora_alpha", "8"], callbacks=[record])
    assert record.names
    for name in record.names:
        assert ("lora_" in name and ".language_model." in name) or ".projector.modules_to_save." in name, name
    assert any("lora_" in n for n in record.names) and any("projector" in n for n in record.names)
    after = tensors(tmp_path / "lora")
    assert not any("lora" in k or "modules_to_save" in k for k in after)  # merged: a plain checkpoint
    assert set(after) == set(before)
    assert not torch.equal(before["model.projector.input_proj.weight"], after["model.projector.input_proj.weight"])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[q], after[q])  # LoRA merged into the LLM
    reloaded = TinyGiantForConditionalGeneration.from_pretrained(tmp_path / "lora")
    assert torch.equal(reloaded.state_dict()[q], after[q])


def test_save_adapter_keeps_the_lora_adapter_unmerged_beside_the_merged_checkpoint(tiny32, data, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    run(["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"), "--output_dir", str(out),
         "--per_device_train_batch_size", "2", "--effective_batch_size", "2", "--max_steps", "2",
         "--save_strategy", "no", "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--save_adapter"])
    adapter = out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert any("lora_" in k for k in load_file(str(adapter / "adapter_model.safetensors")))
    # The adapter on the starting checkpoint, merged, is the merged checkpoint the run saved.
    base = TinyGiantForConditionalGeneration.from_pretrained(tiny32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()
    saved = tensors(out)
    for key in ("model.language_model.layers.0.self_attn.q_proj.weight", "model.projector.input_proj.weight"):
        torch.testing.assert_close(merged[key], saved[key], rtol=0, atol=1e-6, msg=key)
    key = "model.projector.input_proj.weight"
    assert not torch.equal(tensors(tiny32)[key], saved[key])
    with pytest.raises(ValueError, match="needs --use_peft"):
        run(["--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"),
             "--output_dir", str(tmp_path / "plain"), "--max_steps", "1", "--save_adapter"])


def test_ddp_two_processes_on_cpu_and_remote_code_reload(tiny32, data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(ROOT / "train_sft.py"), *FAST, "--model_name_or_path", str(tiny32),
           "--dataset_files", str(data / "train.jsonl"), "--output_dir", str(out),
           "--per_device_train_batch_size", "2", "--effective_batch_size", "4", "--max_steps", "2",
           "--save_strategy", "no", "--feature_cache_dir", str(tmp_path / "features")]
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stderr + proc.stdout
    # Both ranks filled one shared feature cache; every write was atomic, so no partial file is left.
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) >= 4
    assert not list((tmp_path / "features").rglob(".*.partial-*"))
    load = (
        "import torch; from transformers import AutoModelForCausalLM, AutoProcessor\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"p = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "import numpy as np\n"
        "b = p(text='<audio>How many beeps?', audio=np.zeros(16000, dtype=np.float32), sampling_rate=16000)\n"
        "print('LOADED', type(m).__name__, m(**b).logits.shape[1])\n"
    )
    # A fresh process outside the repo: only the checkpoint's own code is importable.
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", load], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert "LOADED TinyGiantForConditionalGeneration" in proc.stdout, proc.stderr[-3000:]


KILLER = """
import os, sys
sys.path.insert(0, {root!r})
from transformers import TrainerCallback
import train_sft
from parsing_tinygiant import SYSTEM_PROMPT, cota_to_messages
from tinygiant.training.data import BadRow, TinyGiantCollator, load_cota
from tinygiant.training.trainer import gradient_accumulation_for

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os._exit(17)  # a hard kill right after the checkpoint is written

callbacks = [Kill()] if "KILL_AT_STEP" in os.environ else []
train_sft.main(*train_sft.parse_args(sys.argv[1:]), callbacks=callbacks)
"""


def test_killed_run_resumes_to_the_same_step_and_weights(tiny32, data, tmp_path):
    script = tmp_path / "train_with_kill.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    common = [*FAST, "--model_name_or_path", str(tiny32), "--dataset_files", str(data / "train.jsonl"),
              "--per_device_train_batch_size", "2", "--effective_batch_size", "2", "--num_train_epochs", "1",
              "--save_steps", "2", "--seed", "3"]

    def train(out, *extra, env=None):
        return subprocess.run([sys.executable, str(script), *common, "--output_dir", str(out), *extra],
                              env={**ENV, **(env or {})}, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    run([*common[len(FAST):], "--output_dir", str(tmp_path / "whole")])  # uninterrupted, in this process
    killed = train(tmp_path / "killed", env={"KILL_AT_STEP": "4"})
    assert killed.returncode == 17, killed.stderr[-3000:]
    assert (tmp_path / "killed" / "checkpoint-4").is_dir() and not (tmp_path / "killed" / "checkpoint-6").exists()
    resumed = train(tmp_path / "killed", "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def last_state(out):
        return json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())

    assert last_state(tmp_path / "whole")["global_step"] == last_state(tmp_path / "killed")["global_step"] == 6
    a, b = tensors(tmp_path / "whole"), tensors(tmp_path / "killed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
