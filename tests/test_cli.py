"""The `tinygiant` command: `ask` streams then answers, `--json` prints one object, and the other subcommands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from helpers import talkative, tone

from modeling_tinygiant import TinyGiantForConditionalGeneration
from tinygiant import cli as tinygiant_cli
from tinygiant.hub.publish import missing_files, save_checkpoint
from tinygiant.serving import model_source
from tinygiant.serving.web_app import SPACE_CODE

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_dir, processor):
    """A plain checkpoint (saved by hand with `save_pretrained`: no pipeline code) and a published Hub folder of the
    same model."""
    root = tmp_path_factory.mktemp("cli")
    model = talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())
    model.save_pretrained(root / "plain")
    processor.save_pretrained(root / "plain")
    save_checkpoint(model, processor, root / "hub")
    soundfile.write(root / "clip.wav", tone(1.0, 16000, 523.0), 16000)
    return root


def tinygiant(*args, cwd):
    """Start `tinygiant ARGS` in a subprocess; `.communicate()` waits for it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "tinygiant", *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ask_streams_then_answers_and_json_prints_one_object(checkpoints):
    question = ["ask", checkpoints / "clip.wav", "Which note is it?", "--choices", "C", "E", "G",
                "--max-new-tokens", "12", "--greedy"]
    # The published folder (its own pipeline code) with --json, and the plain checkpoint (pipeline code from this
    # project) streaming to the terminal; both at once, to save time.
    as_json = tinygiant(*question, "--model", checkpoints / "hub", "--json", cwd=checkpoints)
    streaming = tinygiant(*question, "--model", checkpoints / "plain", cwd=checkpoints)
    (out, err), (streamed_out, streamed_err) = as_json.communicate(timeout=300), streaming.communicate(timeout=300)

    assert as_json.returncode == 0, err[-3000:]
    result = json.loads(out)  # exactly one JSON object: nothing else on stdout
    assert set(result) == {"text", "thinking", "answer", "choice"} and result["text"]
    assert "loaded in" in err and "generated in" in err

    assert streaming.returncode == 0, streamed_err[-3000:]
    streamed, _, summary = streamed_out.rpartition("\nAnswer: ")
    assert streamed == result["text"]
    assert summary.startswith("none (the output was cut at the token limit")  # an untrained model never finishes
    assert summary.rstrip().endswith("Choice: none of the options")


def test_ask_reports_bad_input_on_stderr(checkpoints, capsys):
    code = tinygiant_cli.main(["ask", str(checkpoints / "missing.wav"), "What?", "--model", str(checkpoints / "hub")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "error: audio file" in captured.err and "missing.wav does not exist" in captured.err
    code = tinygiant_cli.main(["ask", str(checkpoints / "clip.wav"), "What?", "--choices", "one",
                               "--model", str(checkpoints / "hub")])
    assert code == 1 and "2 to 6 choices" in capsys.readouterr().err


def test_publish_writes_the_folder_and_fails_cleanly_offline(checkpoints, tmp_path, capsys):
    out = tmp_path / "repo"
    code = tinygiant_cli.main(["publish", str(checkpoints / "plain"), str(out), "--repo-id", "someone/tg"])
    captured = capsys.readouterr()
    assert code == 1 and "could not reach the Hugging Face Hub to push someone/tg" in captured.err
    assert f"wrote {out}" in captured.out and missing_files(out) == []
    assert 'model="someone/tg"' in (out / "README.md").read_text()


def test_default_model(monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)  # no trained demo model here (`runs/demo/model` is looked up in the working dir)
    monkeypatch.setenv("TINYGIANT_CACHE", str(tmp_path))
    monkeypatch.setenv("TINYGIANT_MODEL", "someone/tinygiant")
    assert model_source.default_model() == "someone/tinygiant"
    monkeypatch.delenv("TINYGIANT_MODEL")
    # No trained model: a tiny random one is built once, with a loud warning.
    built = []
    monkeypatch.setattr("tinygiant.hub.tiny_checkpoint.write_tiny_checkpoint",
                        lambda d: built.append(d) or (Path(d).mkdir(parents=True), (Path(d) / "config.json").touch()))
    assert model_source.default_model() == str(tmp_path / "tiny-random")
    assert model_source.default_model() == str(tmp_path / "tiny-random") and len(built) == 1
    assert "UNTRAINED" in caplog.text  # through logging, as a library warns
    # the demo's trained model, where `tinygiant demo` writes it by default
    (tmp_path / "runs" / "demo" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "model" / "config.json").write_text("{}")
    assert model_source.default_model() == str(Path("runs", "demo", "model"))


def test_default_model_starts_with_the_web_apps_rule(monkeypatch, tmp_path):
    """`app.py`'s `default_model` is the one home of `$TINYGIANT_MODEL` and `space.json`; the tools use it first."""
    for name in SPACE_CODE:  # the app and its siblings, as a Space holds them
        (tmp_path / name).write_bytes((PROJECT / name).read_bytes())
    (tmp_path / "space.json").write_text(json.dumps({"model": "someone/space"}))
    monkeypatch.delenv("TINYGIANT_MODEL", raising=False)
    monkeypatch.setattr(model_source, "ROOT", tmp_path)
    model_source.load_app.cache_clear()
    try:
        assert model_source.default_model() == "someone/space"
        monkeypatch.setenv("TINYGIANT_MODEL", "someone/env")
        assert model_source.default_model() == "someone/env"
    finally:
        model_source.load_app.cache_clear()


def test_the_web_app_loads_without_gradio():
    """`tinygiant ask` reads `app.py`'s rule; gradio (the `app` extra) is imported only to build the page."""
    code = ("import runpy, sys; app = runpy.run_path('app.py'); "
            "assert 'gradio' not in sys.modules, 'gradio imported'; print(app['default_model']())")
    run = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TINYGIANT_MODEL": "someone/tinygiant"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "someone/tinygiant"


def test_other_subcommands_dispatch(capsys):
    assert tinygiant_cli.main(["eval", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("mmar", "mmau", "mmsu", "synthetic", "compare", "report"))
    assert tinygiant_cli.main(["export", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "onnx" in help_text and "gguf" in help_text
    with pytest.raises(SystemExit):
        tinygiant_cli.main(["tiny-checkpoint", "--help"])
    assert "out_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tinygiant_cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("ask", "publish", "tiny-checkpoint", "demo", "eval", "TINYGIANT_MODEL"))


def test_help_lists_every_command_on_one_line_each(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tinygiant_cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0
    lines = help_text.splitlines()
    for command in ("ask", "publish", *tinygiant_cli.DISPATCH):
        line = next(line for line in lines if line.split()[:1] == [command])
        assert len(line.split()) > 3, f"{command}'s help is not on its own line: {line!r}"
    assert "--engine vllm" in help_text and "--no-app" in help_text and "--debug" in help_text


@pytest.mark.parametrize("command", [["ask"], ["publish"], ["tiny-checkpoint"], ["demo"], ["serve"], ["eval", "mmar"],
                                     ["eval", "mmau"], ["eval", "compare"], ["eval", "report"], ["export", "onnx"],
                                     ["export", "gguf"]])
def test_each_command_help_is_under_its_own_name(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tinygiant_cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tinygiant {' '.join(command)} ")


def test_serve_help_shows_the_apps_and_the_engines_options(capsys):
    with pytest.raises(SystemExit):
        tinygiant_cli.main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--model", "--backend", "--max-new-tokens", "--system-prompt",  # the app's
                   "--engine", "--no-app", "--app-port", "--log", "--audio-limit", "[-- VLLM_SERVE_FLAG ...]"):
        assert option in help_text, option


def one_error_line(err: str) -> str:
    """The one `error:` line of a failed command; no traceback."""
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


def test_the_engines_options_need_the_engine(capsys):
    for argv, message in ((["serve", "--no-app"], "--no-app: only with --engine vllm"),
                          (["serve", "--app-port", "9000", "--log", "x.log"], "--app-port, --log: only with --engine"),
                          (["serve", "--", "--max-model-len", "512"], "they need --engine vllm")):
        with pytest.raises(SystemExit) as exit_info:
            tinygiant_cli.main(argv)
        assert exit_info.value.code == 2 and message in one_error_line(capsys.readouterr().err)


def test_expected_failures_end_with_one_error_line_and_debug_shows_the_traceback(tmp_path, capsys):
    failures = {  # the command, and what its error line says
        ("eval", "mmar", "--model", str(tmp_path), "--output-dir", str(tmp_path / "run")): "pass --meta",  # offline
        ("eval", "mmsu-pro",): "(got 'mmsu-pro')",
        ("export", "onnx", str(tmp_path / "missing"), str(tmp_path / "out")): "missing is not a folder",
        ("ask", str(tmp_path / "none.wav"), "What?"): "none.wav does not exist",
    }
    for argv, message in failures.items():
        code = tinygiant_cli.main(list(argv))
        assert code and code != 0, argv
        assert message in one_error_line(capsys.readouterr().err), argv
    with pytest.raises(RuntimeError, match="pass --meta"):  # the same failure, with its traceback
        tinygiant_cli.main(["eval", "mmar", "--debug", "--model", str(tmp_path), "--output-dir", str(tmp_path / "r")])


def test_ask_with_int8_weights_answers_like_the_full_precision_model(checkpoints, capsys):
    question = ["ask", str(checkpoints / "clip.wav"), "Which note is it?", "--model", str(checkpoints / "hub"),
                "--json", "--greedy", "--max-new-tokens", "6"]
    assert tinygiant_cli.main(question) == 0
    full = json.loads(capsys.readouterr().out)
    assert tinygiant_cli.main([*question, "--int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert set(int8) == set(full) and int8["text"]
    # Same first tokens: int8 weight rounding barely moves a small model's logits.
    assert int8["text"][:2] == full["text"][:2]


def test_eval_limit_scores_the_items_it_asked_not_the_others_as_wrong(tiny_dir, tmp_path):
    from tinygiant.demo.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=2, n_heldout=12, tasks=["higher_tone", "count_beeps"])
    meta = tmp_path / "data" / "eval-meta.jsonl"
    assert len(meta.read_text().splitlines()) > 2
    code = tinygiant_cli.main(["eval", "synthetic", "--model", str(tiny_dir), "--meta", str(meta), "--limit", "2",
                               "--max-new-tokens", "4", "--output-dir", str(tmp_path / "run")])
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert code == 0 and scores["overall"]["total"] == 2 and scores["n_missing"] == 0
