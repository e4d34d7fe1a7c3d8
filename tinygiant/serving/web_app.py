"""The web app from the tools: serving it, its example clips from the synthetic generator, and a Hugging Face Space
folder.

    tinygiant serve [app options]            # examples in $TINYGIANT_CACHE/examples, then `app.py`
    tinygiant publish --space DIR [--repo-id you/tinygiant]

`app.py` (the app, at the repository root as Spaces expect) never imports this package: the examples are written
here, as wavs plus `examples.json`, and the app only reads them.
"""

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import soundfile
from huggingface_hub import SpaceCard, SpaceCardData

from tinygiant.demo.synthetic import generate_clip
from tinygiant.files import write_json_atomic, write_text_atomic
from tinygiant.serving.model_source import cache_dir, default_model, load_app, root_file

# The root files a Space runs: the app and the siblings it imports (the prompt format, the chat-server client).
SPACE_CODE = ("app.py", "parsing_tinygiant.py", "client_tinygiant.py")
# One clip per task whose sounds a listener can check by ear, seeded so every run writes the same files.
EXAMPLE_TASKS = (("count_beeps", 3), ("higher_tone", 1), ("chord_or_note", 2))
# `openai` is for `app.py --backend` (a Space whose variable `TINYGIANT_BACKEND` names a server).
SPACE_REQUIREMENTS = ["gradio>=6,<7", "transformers>=5.24,<6", "torch>=2.4", "soundfile", "soxr", "numpy>=1.26",
                      "openai>=1.40"]


def write_examples(out_dir: str | Path) -> Path:
    """Write the example clips and their `examples.json` into `out_dir` (idempotent); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, seed in EXAMPLE_TASKS:
        clip = generate_clip(task, seed=seed)
        name = f"{task}.wav"
        soundfile.write(out / name, clip.waveform, clip.sampling_rate, subtype="PCM_16")
        rows.append({"audio": name, "question": clip.question, "choices": clip.choices})
    write_json_atomic(out / "examples.json", rows)
    return out


def write_space(out_dir: str | Path, repo_id: str | None = None) -> Path:
    """A Space folder: `app.py`, its sibling, `requirements.txt`, a README with Spaces front matter, the examples and
    `space.json` naming the model (`repo_id`; else set the Space variable `TINYGIANT_MODEL`). Returns the folder."""
    import gradio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPACE_CODE:
        shutil.copyfile(root_file(name), out / name)
    write_text_atomic(out / "requirements.txt", "\n".join(SPACE_REQUIREMENTS) + "\n")
    write_json_atomic(out / "space.json", {"model": repo_id}, indent=None)
    write_examples(out / "examples")
    data = SpaceCardData(title="TinyGiant", sdk="gradio", sdk_version=gradio.__version__, app_file="app.py",
                         license="apache-2.0", models=[repo_id] if repo_id else None, emoji="🔊",
                         colorFrom="indigo", colorTo="blue", pinned=False,
                         short_description="Ask questions about sounds, music and speech")
    model = (f"[`{repo_id}`](https://huggingface.co/{repo_id})" if repo_id
             else "the model in the `TINYGIANT_MODEL` variable")
    card = SpaceCard(f"""---
{data.to_yaml()}
---

# TinyGiant

Record or upload a sound and ask about it: TinyGiant, a compact audio-language model ({model}), reasons in a
collapsible block and then answers. Follow-up questions in the same chat are about the same clip.

On CPU hardware the model runs with int8 weights, one request at a time. With the Space variable `TINYGIANT_BACKEND`
set to an OpenAI-compatible server's URL (TinyGiant on vLLM), the Space holds no model and serves several users at
once. From code: `gradio_client.Client(space).predict(handle_file("clip.wav"), question, choices, api_name="/answer")`.
""")
    card.save(out / "README.md")
    return out


def serve_parser() -> argparse.ArgumentParser:
    """`tinygiant serve`'s options, all in one help: the app's (`app.py`), then the engine's
    (`tinygiant.serving.vllm_server`)."""
    from tinygiant.serving import vllm_server

    parser = load_app().build_parser(prog="tinygiant serve")
    parser.usage = "tinygiant serve [APP OPTIONS] [--engine vllm [ENGINE OPTIONS] [-- VLLM_SERVE_FLAG ...]]"
    engine = parser.add_argument_group(
        "with --engine vllm", "A vLLM server runs the model and the app runs on it (as with --backend). --model, "
        "--host and --no-int8 are then the server's, --port is the server's port (default 8000) and --app-port the "
        "app's; with --no-app the server runs alone. Flags after a lone `--` go to `vllm serve` as they are.")
    vllm_server.add_engine_arguments(engine)
    return parser


def main(argv: Sequence[str] | None = None) -> int | None:
    """`tinygiant serve`: run `app.py` with the example clips and, without `--model` (or `--backend`, where the
    server names its model), the tools' default model (`model_source.default_model`); with `--engine vllm`, hand over
    to `tinygiant.serving.vllm_server`."""
    argv = list(argv or [])
    head = argv[:argv.index("--")] if "--" in argv else argv
    if any(a == "--engine" or a.startswith("--engine=") for a in head):
        from tinygiant.serving import vllm_server

        return vllm_server.main(argv, run_app=main)
    parser = serve_parser()
    if "--" in argv:
        parser.error("flags after `--` go to `vllm serve`: they need --engine vllm")
    args = parser.parse_args(argv)  # every option checked, the engine's included
    engine_only = [f"--{name.replace('_', '-')}" for name in ("audio_limit", "app_port", "no_app", "log")
                   if getattr(args, name) != parser.get_default(name)]
    if engine_only:
        parser.error(f"{', '.join(engine_only)}: only with --engine vllm")
    if not any(a.split("=")[0] in ("--model", "--backend") for a in argv):
        argv += ["--model", default_model()]
    if not any(a.startswith("--examples") for a in argv):
        argv += ["--examples", str(write_examples(cache_dir() / "examples"))]
    load_app().main(argv, prog="tinygiant serve")

