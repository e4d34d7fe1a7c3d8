"""Write a TinyGiant checkpoint as a complete Hugging Face Hub repo folder, and push it.

Every folder this project writes goes through `save_checkpoint`: `tinygiant tiny-checkpoint`, `train_sft.py`'s
output and `tinygiant publish`. It writes everything that `pipeline("audio-reasoning", model=dir,
trust_remote_code=True)`, `AutoModel` and `AutoProcessor` need on a machine without this project: weights
(safetensors), config with `auto_map` and `custom_pipelines`, generation config, processor and chat template, every
remote-code file (`SHIPPED_CODE`, the one list of them) and a model card. `push_to_hub` uploads that folder as it is.

    tinygiant publish CHECKPOINT OUT_DIR [--repo-id you/tinygiant]
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from transformers import PreTrainedModel, ProcessorMixin

from pipeline_tinygiant import TASK
from tinygiant.files import leftover_partials, partial_path

# The remote code: the root modules that `trust_remote_code=True` loads, in the order they import each other.
SHIPPED_CODE = (
    "configuration_tinygiant.py",
    "modeling_tinygiant.py",
    "processing_tinygiant.py",
    "parsing_tinygiant.py",
    "int8_tinygiant.py",
    "llamacpp_tinygiant.py",
    "pipeline_tinygiant.py",
    "client_tinygiant.py",
    "onnx_tinygiant.py",
)
# Root files that are not remote code: the TRL-style training scripts and the web app (Spaces' `app.py`), run from a
# clone or a Space folder (`tinygiant.serving.web_app`).
ROOT_SCRIPTS = ("train_sft.py", "train_grpo.py", "app.py")
REQUIRED_FILES = (
    *SHIPPED_CODE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "README.md",
)
CUSTOM_PIPELINES = {
    TASK: {
        "impl": "pipeline_tinygiant.TinyGiantAudioReasoningPipeline",
        # Names of transformers Auto classes (`pipeline()` resolves them with getattr(transformers, name)).
        "pt": ["AutoModelForCausalLM"],
        "type": "multimodal",
    }
}
BASE_MODELS = [
    "openai/whisper-large-v3-turbo", "laion/clap-htsat-unfused", "laion/larger_clap_general", "Qwen/Qwen3-0.6B",
]
REPO_ID_PLACEHOLDER = "your-username/tinygiant"


def save_checkpoint(model: PreTrainedModel, processor: ProcessorMixin, out_dir: str | Path,
                    training_summary: dict | str | None = None, repo_id: str | None = None) -> Path:
    """Write `model` and `processor` as a complete Hub repo folder in `out_dir`; returns its `Path`.

    The folder is written beside `out_dir` first and only then moved into place, so a save killed halfway never
    leaves a folder that loads half a model: a new `out_dir` appears whole by one rename; into an existing one (e.g.
    `train_sft.py`'s output_dir, which also holds its checkpoints and logs) the files move one by one with
    `config.json` and `processor_config.json`, without which neither the model nor the processor loads, removed first
    and put back last. `training_summary` (a dict, rendered
    as a table, or markdown text) becomes a "Training" section of the model card; `repo_id` goes in its snippet.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for leftover in leftover_partials(out):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = partial_path(out)
    model.save_pretrained(staging)  # registered classes copy their own code files (and `auto_map`) as they save
    processor.save_pretrained(staging)
    if not (staging / "generation_config.json").exists():
        model.generation_config.save_pretrained(staging)
    complete_folder(staging, training_summary=training_summary, repo_id=repo_id, model=model)
    if not out.exists():
        os.rename(staging, out)
        return out
    last = ("processor_config.json", "config.json")
    for name in (*last, *SHIPPED_CODE):  # never leave code from an earlier save that this one does not ship
        (out / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: last.index(p.name) + 1 if p.name in last else 0):
        os.replace(path, out / path.name)
    staging.rmdir()
    return out


def complete_folder(folder: str | Path, training_summary: dict | str | None = None, repo_id: str | None = None,
                    model: PreTrainedModel | None = None) -> Path:
    """Make a saved model + processor folder a complete Hub repo: the pipeline's `custom_pipelines` entry in
    `config.json`, the remote-code files the model and processor did not copy themselves, and the model card."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    config["custom_pipelines"] = CUSTOM_PIPELINES
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in SHIPPED_CODE:  # the pipeline, parsing and int8 files are not imported by the model or processor
        if not (folder / name).exists():
            shutil.copyfile(_module_file(name), folder / name)
    model_card(config, repo_id=repo_id, training_summary=training_summary,
               num_parameters=None if model is None else model.num_parameters()).save(folder / "README.md")
    missing = missing_files(folder)
    if missing:
        raise RuntimeError(f"the Hub folder {folder} is incomplete, missing: {missing}")
    return folder


def missing_files(folder: str | Path) -> list[str]:
    """The files a complete TinyGiant Hub folder must have that `folder` lacks."""
    return [name for name in REQUIRED_FILES if not (Path(folder) / name).is_file()]


def push_to_hub(out_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload the folder written by `save_checkpoint` to the model repo `repo_id` (created if needed); returns its URL.

    The folder is uploaded as it is and never modified (pass `repo_id` to `save_checkpoint` for the card's snippet).
    Raises `RuntimeError` if the folder is incomplete, the Hub cannot be reached (offline, no network) or refuses.
    """
    out = Path(out_dir)
    missing = missing_files(out)
    if missing:
        raise RuntimeError(
            f"{out} is not a complete TinyGiant Hub folder (missing {missing}); write it with `tinygiant publish "
            "CHECKPOINT OUT_DIR` first"
        )
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=out, repo_type="model", commit_message="Upload TinyGiant")
    except HfHubHTTPError as error:  # the Hub answered: bad token, no rights, invalid name...
        raise RuntimeError(f"the Hugging Face Hub refused the push to {repo_id}: {error}") from error
    except Exception as error:  # offline mode, DNS, connection refused, timeouts
        raise RuntimeError(f"could not reach the Hugging Face Hub to push {repo_id}: {error}") from error
    return str(url)


def model_card(config: dict, repo_id: str | None = None, training_summary: dict | str | None = None,
               num_parameters: int | None = None) -> ModelCard:
    """The model card of a checkpoint with this `config.json` content: Hub metadata (YAML) and usage."""
    repo_id = repo_id or REPO_ID_PLACEHOLDER
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="audio-text-to-text",
        base_model=BASE_MODELS,
        datasets=["zhifeixie/Audio-Reasoner-CoTA"],
        language=["en"],
        tags=["audio", "audio-reasoning", "audio-question-answering", "chain-of-thought", "custom_code", "tinygiant"],
    )
    size = "" if num_parameters is None else f" This checkpoint has {num_parameters / 1e6:.1f} M parameters."
    text = f"""---
{data.to_yaml()}
---

# TinyGiant

TinyGiant is a compact audio-language model that answers questions about sounds, music and speech with a short
chain of thought. A frozen Whisper encoder and two frozen HTS-AT (CLAP) towers listen; a query-guided projector
turns what they hear into {config["num_audio_tokens"]} audio tokens, guided by the question; a Qwen3 language
model reasons inside `<think>...</think>` (CoTA's PLANNING, CAPTION, REASONING and SUMMARY sections) and then
answers.{size}

## Usage

The model runs with remote code (`trust_remote_code=True`), with `transformers>=5`, `soundfile` and `soxr`. Audio goes
inside the chat messages (`"path"`, `"url"`, or `"audio"` with an array and its `"sampling_rate"`):

```python
from transformers import AutoModel, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)

conversation = [{{"role": "user", "content": [{{"type": "audio", "path": "clip.wav"}},
                                             {{"type": "text", "text": "What is the sound?"}}]}}]
inputs = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=512)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

The pipeline parses the reasoning and the answer, continues conversations, and encodes each clip once:

```python
from transformers import pipeline

pipe = pipeline("audio-reasoning", model="{repo_id}", trust_remote_code=True)   # int8=True for int8 weights on CPU
out = pipe("clip.wav", question="Which instrument plays the melody?", choices=["piano", "violin", "flute"])
print(out["thinking"])  # the chain of thought
print(out["answer"], out["choice"])  # the final answer and the option it picks

out = pipe(conversation)  # out["generated_text"]: the conversation with the new assistant turn
pipe(out["generated_text"] + [{{"role": "user", "content": "Is it loud?"}}])  # a follow-up; the clip is not re-encoded

# Several clips in one batched generate call; per-item questions as dicts.
pipe([{{"audio": "a.wav", "question": "How many beeps?"}}, {{"audio": "b.wav", "question": "Is there speech?"}}],
     batch_size=2, max_new_tokens=512, do_sample=False)
```

transformers' generic task works too:
`pipeline("any-to-any", model="{repo_id}", trust_remote_code=True)(text=conversation)`.

A web app (Gradio; record or upload, streamed reasoning, follow-ups) runs this checkpoint with
`python app.py --model {repo_id}` from the TinyGiant repository, or as a Space (`tinygiant publish --space DIR`).

The pipeline's default system prompt is Audio-Reasoner's, with `<think>` markup
(`parsing_tinygiant.SYSTEM_PROMPT`); pass `system_prompt=` to change it.

## Model

| part | from | trained |
|---|---|---|
| speech/audio encoder | `openai/whisper-large-v3-turbo` (encoder) | frozen |
| audio-event encoder | `laion/clap-htsat-unfused` (HTS-AT) | frozen |
| global audio gate | `laion/larger_clap_general` (HTS-AT) | frozen |
| projector | query-guided, new | trained |
| language model | `Qwen/Qwen3-0.6B` | fine-tuned |

## License

Apache-2.0. The base models are Apache-2.0 (Qwen3, CLAP) and MIT (Whisper); keep their notices. Check the terms of
the training data (Audio-Reasoner-CoTA) before commercial use.
"""
    if training_summary:
        text += "\n## Training\n\n" + _render_summary(training_summary) + "\n"
    return ModelCard(text)


def _render_summary(summary: dict | str) -> str:
    if isinstance(summary, str):
        return summary.strip()
    rows = [f"| {key} | {json.dumps(value) if isinstance(value, (dict, list)) else value} |"
            for key, value in summary.items()]
    return "\n".join(["| | |", "|---|---|", *rows])


def _module_file(file_name: str) -> str:
    """The path of this installation's copy of a TinyGiant module."""
    spec = importlib.util.find_spec(file_name.removesuffix(".py"))
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot find {file_name} to ship with the checkpoint")
    return spec.origin
