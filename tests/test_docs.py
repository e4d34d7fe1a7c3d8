"""The manual is a test: every fenced `bash`, `console` and `python` block of README.md and docs/*.md runs, as written,
offline, in a fresh folder that holds what the pages assume (transformers' doctests are the model).

- The folder: the repository's files (linked; `benchmarks/` copied, so that nothing a page runs can touch the committed
  results), `runs/demo/` (a tiny TinyGiant and its control trained by `tinygiant demo` once per session, on fewer
  rows: `DEMO_ARGS`), `runs/tiny` (a tiny random checkpoint), and the clips in `CLIPS` (`tones.wav` is the demo's
  own "which tone is higher" task, so the demo model knows the question).
- Placeholders in the pages map to those things: `PLACEHOLDERS` for commands, `python_names` for code.
- A block that cannot run here (the Hub, a GPU, several processes, a server left running) carries a visible marker on
  the line above it, `<!-- not run: REASON -->`; the markers are counted and printed, page by page.
- Commands that run for many minutes as written run with fewer steps, by the visible rules in `SMALLER`.
- Output the pages show is checked for its shape: a console command's output lines (JSON by their keys, text with its
  numbers free), a Python expression's `# {...}` comment (the keys of the dict it returns).

All pages' blocks run in one test per page, in order, sharing one folder and one Python namespace (later blocks use
what earlier ones made, as a reader's session would).
"""

import ast
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from transformers import GenerationConfig

PROJECT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(PROJECT)) for p in (PROJECT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"bash", "console", "python"}
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")

# `tinygiant demo` as the session's demo model is trained: the pages' demo, on fewer rows and one epoch.
DEMO_ARGS = ["--n-train", "40", "--n-heldout", "10", "--epochs", "1"]
# So briefly trained, the model rarely ends an answer by itself: every answer is cut at this many new tokens (its
# generation_config.json here says so, and the rules below shorten the pages' explicit limits).
ANSWER_TOKENS = 48
# Commands that run for many minutes as a page writes them, and what runs here instead (regex -> replacement, on the
# command's text). Each keeps the command and its outputs; only the amount of work shrinks.
SMALLER = {
    r"^tinygiant demo(?=\s*(#.*)?$)": "tinygiant demo " + " ".join(DEMO_ARGS),
    r"^tinygiant eval (synthetic|mmar|mmau|mmsu) ": rf"tinygiant eval \1 --max-new-tokens {ANSWER_TOKENS} ",
    r"^python train_sft\.py ": "python train_sft.py --max_steps 2 --per_device_train_batch_size 2 "
                               "--effective_batch_size 2 ",
}
# The same for Python blocks.
SMALLER_PYTHON = {r"\bmax_new_tokens=\d+": f"max_new_tokens={ANSWER_TOKENS}"}
# Names in the pages' commands for things a reader has, and what they are here.
PLACEHOLDERS = {
    r"--model you/tinygiant\b": "--model runs/demo/model",  # a model on the Hub: the demo's, here
}
# The clips the pages ask about: file name -> the synthetic task and its answer (the README: a high tone, then a low).
CLIPS = {"tones.wav": ("higher_tone", "the first"), "a.wav": ("count_beeps", "three")}


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the marker's reason

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: str) -> list[Block]:
    """The page's fenced blocks in a language that runs, each with the `not run` marker above it, if any."""
    lines = (PROJECT / page).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        if opening["language"] in RUN_LANGUAGES:
            above = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = NOT_RUN.match(above)
            blocks.append(Block(page, index + 1, opening["language"], "\n".join(lines[index + 1:end]),
                                marker["reason"] if marker else None))
        index = end + 1
    return blocks


# ----------------------------------------------------------------------------- what the pages assume is there


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """`tinygiant demo` once per session, smaller (`DEMO_ARGS`): its model and data."""
    from tinygiant.demo import sft

    out = tmp_path_factory.mktemp("docs-demo")
    sft.main(["--output-dir", str(out), *DEMO_ARGS])
    for run in ("model", "control"):
        config = GenerationConfig.from_pretrained(out / run)
        config.max_new_tokens = ANSWER_TOKENS
        config.save_pretrained(out / run)
    return out


def reader_folder(root: Path, demo_dir: Path, tiny_dir: Path) -> Path:
    """A folder laid out as a reader's checkout after `tinygiant demo`."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in PROJECT.iterdir():
        if entry.name in {".git", "runs", "benchmarks"} or entry.name.startswith(".pytest"):
            continue
        (root / entry.name).symlink_to(entry)
    shutil.copytree(PROJECT / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    # A copy: a page may run `tinygiant demo` again, over it.
    shutil.copytree(demo_dir, root / "runs" / "demo", ignore=shutil.ignore_patterns("feature_cache", "tiny"))
    shutil.copytree(tiny_dir, root / "runs" / "tiny")
    from tinygiant.demo.synthetic import SAMPLING_RATE, TASKS

    for seed, (name, (task, answer)) in enumerate(CLIPS.items()):
        clip = TASKS[task](np.random.default_rng(seed), SAMPLING_RATE, answer=answer)
        soundfile.write(root / name, clip.waveform, clip.sampling_rate)
    return root


def python_names(root: Path) -> dict:
    """The names the pages' Python uses without defining them."""
    from parsing_tinygiant import conversation

    model = str(root / "runs" / "demo" / "model")
    return {"repo_or_dir": model, "folder": model,
            "waveform": np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32),
            "other_conversation": conversation("How many beeps are there?", audio=str(root / "a.wav"))}


def environment(root: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{PROJECT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "TINYGIANT_CACHE": str(root / ".cache"), "PYTHONPATH": str(root)}


# ----------------------------------------------------------------------------- running blocks


def as_run_here(command: str) -> str:
    """The command with its placeholders mapped (`PLACEHOLDERS`) and, if it is a long one, made smaller (`SMALLER`)."""
    for pattern, replacement in {**SMALLER, **PLACEHOLDERS}.items():
        command = re.sub(pattern, replacement, command, flags=re.MULTILINE)
    return command


def console_commands(code: str) -> list[tuple[str, list[str]]]:
    """A console block's `$ ` commands (continuation lines joined), each with the output lines shown after it."""
    commands, lines = [], code.splitlines()
    for line in lines:
        if line.startswith("$ "):
            commands.append([line[2:], []])
        elif commands and commands[-1][0].endswith("\\"):
            commands[-1][0] += "\n" + line
        elif commands:
            commands[-1][1].append(line)
    return [(command, output) for command, output in commands]


def run_shell(command: str, root: Path, block: Block) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", as_run_here(command)], cwd=root,
                          env=environment(root), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"{block.where}: `{command}` exited with {done.returncode}\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def shape(line: str) -> str:
    """A shown output line as a pattern: its numbers free."""
    return re.sub(r"\\?-?\d+(\\\.\d+)?", r"-?[\\d.]+", re.escape(line.strip()))


def check_output(shown: list[str], printed: str, block: Block, command: str) -> None:
    shown = [line for line in shown if line.strip()]
    if not shown:
        return
    printed_lines = [line for line in printed.splitlines() if line.strip()]
    assert len(printed_lines) == len(shown), f"{block.where}: `{command}` printed {printed_lines}, the page {shown}"
    for want, got in zip(shown, printed_lines):
        if want.lstrip().startswith("{"):
            assert set(json.loads(got)) == set(json.loads(want)), f"{block.where}: {got} against {want}"
        else:
            assert re.fullmatch(shape(want), got.strip()), f"{block.where}: {got!r} against {want!r}"


def shown_keys(comment: str) -> tuple[set[str], bool]:
    """The top-level keys of a `# {'a': ..., 'b': [{'c': ...}]}` comment, and whether it leaves others out (`{...,`)."""
    keys, depth, quote, start = set(), 0, None, 0
    for index, char in enumerate(comment):
        if quote:
            if char == quote:
                quote = None
                if depth == 1 and comment[index + 1:index + 2] == ":":
                    keys.add(comment[start + 1:index])
        elif char in "'\"":
            quote, start = char, index
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
    return keys, bool(re.match(r"\{\s*\.\.\.", comment))


def run_python(block: Block, names: dict) -> None:
    """Each statement in turn; an expression followed by a `# {...}` comment returns a dict with the keys shown."""
    code = block.code
    for pattern, replacement in SMALLER_PYTHON.items():
        code = re.sub(pattern, replacement, code)
    lines = code.splitlines()
    tree = ast.parse(code)
    for statement in tree.body:
        following = lines[statement.end_lineno].strip() if statement.end_lineno < len(lines) else ""
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), block.where, "eval"), names)
            if following.startswith("# {"):
                comment = following[2:]
                for line in lines[statement.end_lineno + 1:]:  # continued on lines starting "#  "
                    if not line.strip().startswith("#  "):
                        break
                    comment += line.strip()[1:]
                keys, open_ended = shown_keys(comment)
                assert isinstance(value, dict), f"{block.where}: {value!r} is not the dict the page shows"
                assert keys <= set(value) if open_ended else keys == set(value), \
                    f"{block.where}: keys {sorted(value)}, the page shows {sorted(keys)}"
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), block.where, "exec"), names)


def run_page(page: str, root: Path) -> Counter:
    """Every block of `page`, in order; returns the `not run` reasons counted."""
    names, skipped = python_names(root), Counter()
    for block in read_blocks(page):
        if block.not_run:
            skipped[block.not_run] += 1
            continue
        print(f"{block.where}: {block.language} ...", file=sys.stderr, flush=True)  # long work shows progress
        if block.language == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                run_python(block, names)
        elif block.language == "console":
            for command, shown in console_commands(block.code):
                check_output(shown, run_shell(command, root, block), block, command)
        else:
            run_shell(block.code, root, block)
    return skipped


# ----------------------------------------------------------------------------- the tests


def test_every_block_is_found_and_markers_sit_on_blocks():
    """The collector sees each fence; a `not run` marker not directly above a block would silently mark nothing."""
    counts = Counter()
    for page in PAGES:
        text = (PROJECT / page).read_text()
        fences = [line for line in text.splitlines() if FENCE.match(line.strip()) and line.strip() != "```"]
        assert len(read_blocks(page)) == sum(FENCE.match(f.strip())["language"] in RUN_LANGUAGES for f in fences)
        markers = sum(bool(NOT_RUN.match(line.strip())) for line in text.splitlines())
        assert markers == sum(block.not_run is not None for block in read_blocks(page)), f"{page}: a stray marker"
        counts.update("not run" if block.not_run else "run" for block in read_blocks(page))
    print(f"\n{counts['run']} blocks run, {counts['not run']} marked not run, in {len(PAGES)} pages")


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page, demo_dir, tiny_dir, tmp_path, monkeypatch):
    root = reader_folder(tmp_path / "reader", demo_dir, tiny_dir)
    monkeypatch.chdir(root)
    monkeypatch.setenv("TINYGIANT_CACHE", str(root / ".cache"))
    skipped = run_page(page, root)
    blocks = read_blocks(page)
    print(f"\n{page}: {len(blocks) - sum(skipped.values())} blocks run, {sum(skipped.values())} not run"
          + "".join(f"\n    not run ({count}): {reason}" for reason, count in skipped.items()))


# The README's headline figures and the committed results they come from: (results file, key path).
HEADLINES = {
    "decoding speed, ours ÷ Qwen2.5-Omni-3B's thinker": ("cpu.json", "ratios.peer.decode_ratio"),
    "time to first token, 30 s clip, ours ÷ the peer's": ("cpu.json", "ratios.peer.ttft30_ratio"),
    "follow-up question's time to first token ÷ the first's (audio cache)":
        ("cpu.json", "ratios.followup_ttft_vs_first"),
    "int8 peak memory ÷ resident": ("cpu.json", "ratios.int8_peak_rss_vs_resident"),
    "requests/s, vLLM at concurrency 16 ÷ the pipeline one at a time": ("serving.json", "ratios.throughput_ratio_c16"),
    "requests/s, vLLM at concurrency 16 ÷ the machine's limit for the workload":
        ("serving.json", "ratios.c16_vs_limit"),
    "time to first token, one request, vLLM ÷ the pipeline": ("serving.json", "ratios.ttft_p50_c1_ratio"),
    "follow-up question's time to first token ÷ the first's, on vLLM (floor from its FLOPs: 0.40)":
        ("serving.json", "ratios.followup_ttft_ratio"),
}


def test_headline_figures_are_the_committed_results():
    """Every row of the README's figure tables is a committed result, as rounded on the page."""
    rows = re.findall(r"^\| (?!ratio |---)(.+?) \| ([\d.]+) \|$", (PROJECT / "README.md").read_text(), re.MULTILINE)
    assert {label for label, _ in rows} == set(HEADLINES), "a README figure without its results file, or one gone"
    for label, shown in rows:
        file, path = HEADLINES[label]
        value = json.loads((PROJECT / "benchmarks" / "results" / file).read_text())
        for key in path.split("."):
            value = value[key]
        decimals = len(shown.partition(".")[2])
        assert float(shown) == round(value, decimals), f"README: {label} = {shown}, {file} says {value}"
