"""The `tinygiant` command.

    tinygiant ask AUDIO "question" [--choices A B C] [--model PATH_OR_REPO] [--json] [--max-new-tokens N]
    tinygiant tiny-checkpoint OUT_DIR          # a tiny random checkpoint, for trying things offline
    tinygiant publish CHECKPOINT OUT_DIR [--repo-id you/tinygiant]
    tinygiant publish --space DIR [--repo-id you/tinygiant]   # a Hugging Face Space folder for the web app
    tinygiant serve [--model PATH_OR_REPO] [--port 7860] ...   # the web app (app.py), see `tinygiant serve --help`
    tinygiant serve --engine vllm --model PATH_OR_REPO ...    # vLLM's OpenAI-compatible API, the app on it
    tinygiant serve --engine vllm --model PATH_OR_REPO --no-app [-- VLLM_SERVE_FLAG ...]   # the API alone
    tinygiant demo ...                         # see `tinygiant demo --help`
    tinygiant export onnx MODEL_DIR OUT        # ONNX graphs for onnx_tinygiant.py and the browser (tinygiant.export)
    tinygiant export gguf MODEL_DIR OUT.gguf   # the language model for llama.cpp
    tinygiant eval mmar|mmau|mmsu|synthetic ... # a benchmark, see `tinygiant eval mmau --help` (tinygiant.eval)
    tinygiant eval compare RUN_A RUN_B         # two runs on the same items, paired
    tinygiant eval report RUN ...              # the field's table: runs beside the peers' published figures

Every command ends an expected failure (bad input, no network, a server that does not answer) with one `error: ...`
line on stderr and a non-zero exit; `--debug` (anywhere before a lone `--`) shows the traceback instead.
`tinygiant COMMAND --help` shows all of a command's options.

`ask` streams the model's output as it is generated, then prints the parsed answer; with `--json` it prints one JSON
object and nothing else on stdout. Progress and timings go to stderr.

The model for `ask` and `serve` is, in order (`tinygiant.serving.model_source`): `--model`; the `TINYGIANT_MODEL`
environment variable, else `space.json` beside `app.py` (the web app's own rule); `runs/demo/model` (what `tinygiant
demo` trains, by default) if it exists in the current directory; else a tiny random checkpoint built once in
`$TINYGIANT_CACHE/tiny-random` (default `~/.cache/tinygiant/tiny-random`): untrained, it answers junk, with a warning.
"""

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tinygiant.serving.model_source import default_model

# Commands that hand their arguments to another module's `main(argv)`, each with its line in `tinygiant --help`.
DISPATCH = {
    "tiny-checkpoint": ("tinygiant.hub.tiny_checkpoint", "write a tiny random checkpoint, for trying things offline"),
    "demo": ("tinygiant.demo.sft",
             "train, score and ask a tiny TinyGiant on synthetic data, offline (--ablation: Table 3)"),
    "eval": ("tinygiant.eval", "score a benchmark (mmar, mmau, mmsu, synthetic), compare two runs, the field's table"),
    "serve": ("tinygiant.serving.web_app",
              "the web app, in process or on vLLM (--engine vllm; --no-app: vLLM's API alone)"),
    "export": ("tinygiant.export", "the checkpoint as ONNX (onnx_tinygiant.py, the browser) or GGUF (llama.cpp)"),
}
# Failures that a user can cause or fix (bad input, a missing file or package, no network, a server that does not
# answer): one `error:` line; anything else is a bug and keeps its traceback.
EXPECTED_FAILURES = (OSError, ValueError, TypeError, RuntimeError, ImportError)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ask(args: argparse.Namespace) -> None:
    from transformers import TextStreamer

    from pipeline_tinygiant import load_pipeline

    if not Path(args.audio).is_file():  # before the model loads
        raise FileNotFoundError(f"audio file {args.audio} does not exist" if not Path(args.audio).exists()
                                else f"{args.audio} is not a file")
    model = args.model or default_model()
    start = time.perf_counter()
    log(f"loading {model} ...")
    try:
        if args.onnx:  # an exported folder (`tinygiant export onnx`) on ONNX Runtime, without torch
            if args.llama_cpp:
                raise ValueError("--onnx runs the whole model on ONNX Runtime: it takes no --llama-cpp")
            from onnx_tinygiant import TinyGiantOnnx

            pipe = TinyGiantOnnx.from_pretrained(model, dtype="q8" if args.int8 else "fp32")
        else:
            pipe = load_pipeline(model, int8=args.int8, llama_cpp=args.llama_cpp)
    except OSError as error:  # transformers' words for a missing folder, a bad repo id or an unreadable config
        raise RuntimeError(f"cannot load the model {model}: {error}") from error
    log(f"loaded in {time.perf_counter() - start:.1f} s")

    call_kwargs = {}
    if args.max_new_tokens is not None:
        call_kwargs["max_new_tokens"] = args.max_new_tokens
    if args.greedy:
        call_kwargs["do_sample"] = False
    if not args.json:  # stream the text to the terminal as it is generated
        call_kwargs["streamer"] = TextStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    if args.system_prompt is not None:  # else the checkpoint's own
        call_kwargs["system_prompt"] = args.system_prompt
    result = pipe(args.audio, question=args.question, choices=args.choices, **call_kwargs)
    log(f"generated in {time.perf_counter() - start:.1f} s")

    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    # The streamer has printed the text and ended its line.
    if result["answer"] is None:
        print("Answer: none (the output was cut at the token limit before the answer; raise --max-new-tokens)")
    else:
        print(f"Answer: {result['answer']}")
    if args.choices:
        print(f"Choice: {result['choice'] if result['choice'] is not None else 'none of the options'}")


def publish(args: argparse.Namespace) -> None:
    if args.space:
        from tinygiant.serving.web_app import write_space

        if args.checkpoint or args.out_dir:
            raise ValueError("--space DIR writes a Space folder; it takes no CHECKPOINT or OUT_DIR (name the model "
                             "with --repo-id)")
        print(f"wrote {write_space(args.space, repo_id=args.repo_id)}")
        return
    if not (args.checkpoint and args.out_dir):
        raise ValueError("publish needs CHECKPOINT and OUT_DIR (or --space DIR)")
    from modeling_tinygiant import TinyGiantForConditionalGeneration
    from processing_tinygiant import TinyGiantProcessor
    from tinygiant.hub.publish import push_to_hub, save_checkpoint

    model = TinyGiantForConditionalGeneration.from_pretrained(args.checkpoint)
    processor = TinyGiantProcessor.from_pretrained(args.checkpoint, trust_remote_code=True)
    summary = json.loads(Path(args.training_summary).read_text()) if args.training_summary else None
    folder = save_checkpoint(model, processor, args.out_dir, training_summary=summary, repo_id=args.repo_id)
    print(f"wrote {folder}")
    if args.repo_id:
        print(f"pushed to {push_to_hub(folder, args.repo_id, private=args.private)}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """120 columns, and one line per command in `tinygiant --help` (argparse measures a command's name one indent
    short of where it prints it, so the longest name would get a line of its own)."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30, width=120)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(map(len, action.choices)) + self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, longest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygiant", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure, not one error line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("ask", help="ask a question about an audio file", formatter_class=HelpFormatter)
    p.add_argument("audio", help="an audio file (wav, flac, ogg, mp3, ...)")
    p.add_argument("question")
    p.add_argument("--choices", nargs="+", metavar="OPTION", help="2 to 6 answer options")
    p.add_argument("--model", help="checkpoint folder or Hub repo id (default: see `tinygiant --help`)")
    p.add_argument("--json", action="store_true", help="print one JSON object {text, thinking, answer[, choice]}")
    p.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation config, else 1024")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling settings")
    p.add_argument("--system-prompt", help="default: the checkpoint's own (the prompt it was trained with); '' for "
                   "none")
    p.add_argument("--int8", action="store_true", help="int8 weights for CPU inference (the pipeline's `int8=True`)")
    p.add_argument("--llama-cpp", action="store_true",
                   help="the language model on llama.cpp, for faster CPU decoding (the pipeline's `llama_cpp=True`)")
    p.add_argument("--onnx", action="store_true", help="run an exported folder (`tinygiant export onnx`) on ONNX "
                   "Runtime, without torch (onnx_tinygiant.py; with --int8 its int8 graphs)")
    p.set_defaults(run=ask)

    p = commands.add_parser("publish", help="write a checkpoint as a complete Hub repo folder, optionally push it",
                            formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a TinyGiant checkpoint folder")
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--space", metavar="DIR", help="write a Hugging Face Space folder for the web app instead")
    p.add_argument("--repo-id", help="push the folder to this Hub model repo (with --space: the model it runs)")
    p.add_argument("--private", action="store_true", default=None)
    p.add_argument("--training-summary", help="a JSON file whose contents go in the model card")
    p.set_defaults(run=publish)

    for name, (_, help_text) in DISPATCH.items():
        commands.add_parser(name, help=help_text, add_help=False)
    parser.epilog = __doc__.split("\n\n", 2)[2]
    return parser


def run(argv: list[str]) -> None:
    """One command; it raises on failure (what the dispatched `main`s return is for Python callers)."""
    if argv and argv[0] in DISPATCH:
        importlib.import_module(DISPATCH[argv[0]][0]).main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in (argv[:argv.index("--")] if "--" in argv else argv)  # anywhere before a lone `--`
    if debug:
        argv.remove("--debug")
    try:
        run(argv)
    except EXPECTED_FAILURES as error:
        if debug:
            raise
        log(f"error: {error}")
        return 1
    except SystemExit as exit:  # a command's usage message, raised as text: said as the error it is
        if isinstance(exit.code, str) and not debug:
            log(f"error: {exit.code}")
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
