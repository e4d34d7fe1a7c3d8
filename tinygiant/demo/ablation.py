"""The Table 3 ablation as a protocol: four variants x several seeds on the scene benchmark, with intervals.

    tinygiant demo --ablation --seeds 3 [--output-dir runs/ablation]

Every variant (Vanilla, w/o IQ, w/o CLAP, Full) is trained with each seed on the same data (`synthetic.scene`: one
clip, five questions) under a tight audio-token budget, and scored through the synthetic benchmark on the same held-out
items. A seed changes the projector's initial weights and the order of the training rows; the "pretrained" parts
(frozen encoders, LLM initialisation) stay the same, as they would with real checkpoints, so the frozen encoders'
features are computed once per encoder set and reused by all runs (one feature cache). Finished runs are not
retrained when the command is run again.

Statistics (`summarise`):
- run level: whether each run reads the audio at all, by an exact binomial test of its accuracy against chance
  (`above_chance_p`): in this toy a run either reads the audio or answers from the prior, exactly at chance;
- seed level: the mean over seeds of each seed's accuracy, with a t-based 95 % interval over seeds (`ci95`,
  clipped to 0-100 %);
- item level: a bootstrap over held-out items of the seed-averaged accuracy (`item_ci95`);
- paired, between two variants on the same items: the seed-averaged per-item difference with a paired bootstrap
  interval, and McNemar's exact test on the (item, seed) pairs where exactly one of the two is right.
"""

import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tinygiant.demo.toy_training import evaluate, train
from tinygiant.eval.stats import bootstrap_interval, mcnemar_exact
from tinygiant.files import replacing, write_json_atomic, write_text_atomic

# The paper's Table 3 variants, in its order.
VARIANTS = {
    "Vanilla": dict(use_intent_query=False, use_clap_gate=False),
    "w/o IQ": dict(use_intent_query=False),
    "w/o CLAP": dict(use_clap_gate=False),
    "Full": {},
}
# Full against each ablation, then each mechanism alone against Vanilla.
PAIRS = [("Full", "Vanilla"), ("Full", "w/o IQ"), ("Full", "w/o CLAP"), ("w/o CLAP", "Vanilla"), ("w/o IQ", "Vanilla")]
BOOTSTRAP_SAMPLES = 10_000
ABOVE_CHANCE_P = 0.01  # a run whose overall accuracy is this unlikely at chance reads the audio
# Two-sided 95 % quantiles of Student's t for 1-30 degrees of freedom (numpy has no t quantile function).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def slug(variant: str, seed: int) -> str:
    return f"{variant.lower().replace('/', '').replace(' ', '-')}-seed{seed}"


# ----------------------------------------------------------------------------- statistics


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, list[float]]:
    """Mean of `values` with its t-based 95 % interval; [mean, mean] for a single value."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, [mean, mean]
    df = len(values) - 1
    half = (T_975[df - 1] if df <= len(T_975) else 1.96) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, [mean - half, mean + half]


def above_chance_p(n_correct: int, n_items: int, chance: float) -> float:
    """One-sided exact binomial p-value of `n_correct` or more right out of `n_items` if each were right with
    probability `chance`: whether one run reads the audio at all (a run that ignores it answers each question with
    one fixed option and scores exactly chance on balanced items)."""
    return float(sum(math.comb(n_items, k) * chance ** k * (1 - chance) ** (n_items - k)
                     for k in range(n_correct, n_items + 1)))


def summarise(correct: dict[str, dict[int, dict[str, bool]]], tasks: dict[str, str], seed: int = 0,
              chance: float | None = None) -> dict:
    """The ablation summary (the format of `ablation.json`) from per-run item outcomes.

    `correct[variant][seed]` maps held-out item id -> bool; `tasks` maps item id -> task name. Accuracies are in %.
    With `chance` (the held-out chance accuracy, a fraction), each run also gets `above_chance_p`.
    Variants may have different seeds (a partial protocol); pairs are compared on the seeds both have.
    """
    rng = np.random.default_rng(seed)
    items = sorted(tasks)
    task_names = sorted(set(tasks.values()), key=list(tasks.values()).index)

    def matrix(variant: str, seeds: Iterable[int] | None = None) -> np.ndarray:  # (seeds, items) of 0/1
        runs = correct[variant]
        return np.array([[runs[s][i] for i in items] for s in sorted(runs if seeds is None else seeds)],
                        dtype=float)

    def subset(task: str | None) -> np.ndarray:
        return np.array([task is None or tasks[i] == task for i in items])

    # Bootstrap over items, in %; all draws from the one `rng`, in order.
    def percent_interval(per_item: np.ndarray) -> list[float]:
        return [100 * v for v in bootstrap_interval(per_item, BOOTSTRAP_SAMPLES, rng)]

    summary = {"variants": {}, "paired": {}}
    for variant, runs in correct.items():
        m = matrix(variant)
        seeds = {}
        for row, s in zip(m, sorted(runs)):
            seeds[str(s)] = {"accuracy": 100 * row.mean(),
                             "per_task": {t: 100 * row[subset(t)].mean() for t in task_names}}
            if chance is not None:
                seeds[str(s)]["above_chance_p"] = above_chance_p(int(row.sum()), len(row), chance)
        mean, ci95 = t_interval(m.mean(axis=1) * 100)
        ci95 = _accuracy_range(ci95)
        per_task = {}
        for t in task_names:
            cols = m[:, subset(t)]
            task_mean, task_ci = t_interval(cols.mean(axis=1) * 100)
            per_task[t] = {"mean": task_mean, "ci95": _accuracy_range(task_ci),
                           "item_ci95": percent_interval(cols.mean(axis=0))}
        summary["variants"][variant] = {
            "seeds": seeds, "mean": mean, "ci95": ci95,
            "item_ci95": percent_interval(m.mean(axis=0)),
            "per_task": per_task,
        }
    for a, b in PAIRS:
        if a not in correct or b not in correct:
            continue
        common = sorted(set(correct[a]) & set(correct[b]))  # pairs need the same seeds (a partial run may differ)
        if not common:
            continue
        ma, mb = matrix(a, common), matrix(b, common)
        cells = {}
        for t in [None, *task_names]:
            keep = subset(t)
            diff = (ma[:, keep] - mb[:, keep]).mean(axis=0)  # per item, averaged over seeds
            only_a = int(((ma[:, keep] == 1) & (mb[:, keep] == 0)).sum())
            only_b = int(((ma[:, keep] == 0) & (mb[:, keep] == 1)).sum())
            cells["overall" if t is None else t] = {
                "difference": 100 * float(diff.mean()),
                "bootstrap_ci95": percent_interval(diff),
                "only_first_right": only_a, "only_second_right": only_b,
                "mcnemar_p": mcnemar_exact(only_a, only_b),
            }
        summary["paired"][f"{a} - {b}"] = {"seeds": [str(x) for x in common], **cells}
    return summary


# ----------------------------------------------------------------------------- report


def _accuracy_range(ci: Sequence[float]) -> list[float]:
    """A t-interval over 3 seeds of a bimodal accuracy can reach past 0 or 100 %; accuracies cannot."""
    return [max(0.0, ci[0]), min(100.0, ci[1])]


def _interval(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def write_report(summary: dict, out_dir: str | Path, chance: dict[str, float], meta: dict[str, Any]) -> dict[str, Path]:
    """Write `ablation.json`, `ablation.md` and `ablation.png` into `out_dir` (each atomically); returns their paths.

    `chance` maps each task to its chance accuracy (a fraction); `meta` describes the run (preset, seeds, time)."""
    from tinygiant.eval.mmar import PAPER_MMAR

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants = list(summary["variants"])
    tasks = list(next(iter(summary["variants"].values()))["per_task"])
    seeds = sorted({s for v in variants for s in summary["variants"][v]["seeds"]}, key=int)
    paper = PAPER_MMAR["ablation"]
    lines = [
        "# Ablation on the scene benchmark",
        "",
        f"{meta['runs_scored']} of {meta['runs_planned']} runs scored"
        + ("" if meta["runs_scored"] == meta["runs_planned"] else " (a partial protocol: the intervals cover the seeds "
           "each variant has)") + ". "
        f"Variants x seeds, each trained on the same {meta['n_train_rows']} rows and scored "
        f"through the synthetic benchmark on the same {meta['n_items']} held-out items "
        f"({meta['n_heldout_clips']} clips, {len(tasks)} questions each); N = {meta['preset']['num_audio_tokens']} "
        f"audio tokens, {meta['steps_per_run']} optimizer steps per run. Training and scoring took "
        f"{meta['run_seconds_total'] / 60:.0f} min of run time in all, two runs at a time ({meta['runs_trained']} runs "
        f"trained in the last invocation, "
        f"{meta['wall_seconds'] / 60:.1f} min wall time).",
        "",
    ]
    for title, key in (("Mean accuracy % over seeds [95 % t-interval over seeds]", "ci95"),
                       ("Item level: mean accuracy % over seeds [95 % bootstrap interval over items]", "item_ci95")):
        lines += [f"{title}:", "", "| task | chance | " + " | ".join(variants) + " |",
                  "|---|---:|" + "---:|" * len(variants)]
        for t in ["overall", *tasks]:
            cells = [summary["variants"][v] if t == "overall" else summary["variants"][v]["per_task"][t]
                     for v in variants]
            chance_pct = 100 * (meta["chance_overall"] if t == "overall" else chance[t])
            name = "**overall**" if t == "overall" else t
            lines.append(f"| {name} | {chance_pct:.1f} | "
                         + " | ".join(f"{c['mean']:.1f} {_interval(c[key])}" for c in cells) + " |")
        if key == "ci95":
            lines.append("| paper (Table 3), MMAR overall | | "
                         + " | ".join(f"{paper[v]['overall']:.2f}" for v in variants) + " |")
        lines.append("")
    lines += [f"Per seed (overall accuracy %; * : above chance, one-sided exact binomial p < {ABOVE_CHANCE_P}, "
              "i.e. the run reads the audio):", "",
              "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | runs above chance |",
              "|---|" + "---:|" * (len(seeds) + 1)]
    for v in variants:
        per_seed = summary["variants"][v]["seeds"]
        above = [s for s, r in per_seed.items() if r.get("above_chance_p", 1.0) < ABOVE_CHANCE_P]
        lines.append(f"| {v} | " + " | ".join(
            f"{per_seed[s]['accuracy']:.1f}{' *' if s in above else ''}" if s in per_seed else "not run"
            for s in seeds) + f" | {len(above)} of {len(per_seed)} |")
    lines += ["", "Paired differences on the same items (points; bootstrap 95 % interval over items of the "
              "seed-averaged difference; McNemar exact p over (item, seed) pairs, with the discordant counts):", "",
              "| pair | " + " | ".join(["overall", *tasks]) + " |", "|---|" + "---:|" * (len(tasks) + 1)]
    for pair, cells in summary["paired"].items():
        row = [f"{c['difference']:+.1f} {_interval(c['bootstrap_ci95'])} p={c['mcnemar_p']:.3g} "
               f"({c['only_first_right']}/{c['only_second_right']})" for key, c in cells.items() if key != "seeds"]
        lines.append(f"| {pair} (seeds {', '.join(cells['seeds'])}) | " + " | ".join(row) + " |")
    write_text_atomic(out / "ablation.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "ablation.json", {**summary, "protocol": meta})
    plot(summary, chance, meta["chance_overall"], out / "ablation.png")
    return {name: out / name for name in ("ablation.json", "ablation.md", "ablation.png")}


def plot(summary: dict, chance: dict[str, float], chance_overall: float, path: str | Path) -> None:
    """Grouped bars per task: each variant's mean with its seed-level interval, seeds as dots, chance as a tick; and
    beside them, in the same colours, the paper's Table 3 (MMAR overall accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinygiant.eval.mmar import PAPER_MMAR

    variants = list(summary["variants"])
    tasks = ["overall", *next(iter(summary["variants"].values()))["per_task"]]
    width = 0.8 / len(variants)
    fig, (ax, paper_ax) = plt.subplots(1, 2, figsize=(1.6 * len(tasks) + 2.6, 4.2), sharey=True,
                                       gridspec_kw={"width_ratios": [len(tasks), 1.2]})
    for k, v in enumerate(variants):
        entry = summary["variants"][v]
        cells = [entry if t == "overall" else entry["per_task"][t] for t in tasks]
        x = np.arange(len(tasks)) + (k - (len(variants) - 1) / 2) * width
        means = [c["mean"] for c in cells]
        errors = np.array([[c["mean"] - c["ci95"][0], c["ci95"][1] - c["mean"]] for c in cells]).T
        ax.bar(x, means, width, yerr=errors, capsize=2, label=v)
        for s in entry["seeds"].values():
            dots = [s["accuracy"] if t == "overall" else s["per_task"][t] for t in tasks]
            ax.scatter(x, dots, s=6, color="black", zorder=3)
    for i, t in enumerate(tasks):
        level = 100 * (chance_overall if t == "overall" else chance[t])
        ax.hlines(level, i - 0.45, i + 0.45, colors="grey", linestyles="dashed")
    ax.set_xticks(np.arange(len(tasks)), [t.replace("scene_", "") for t in tasks])
    ax.set(ylabel="held-out accuracy %", ylim=(0, 105),
           title="Table 3 variants on the scene benchmark (mean, 95 % t-interval over seeds, dots = seeds, "
                 "dashes = chance)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, ncols=len(variants), loc="lower right")
    paper = PAPER_MMAR["ablation"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, v in enumerate(variants):
        paper_ax.bar(k, paper[v]["overall"], 0.8, color=colours[k % len(colours)])
        paper_ax.text(k, paper[v]["overall"] + 1, f"{paper[v]['overall']:.1f}", ha="center", fontsize=7)
    paper_ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=7)
    paper_ax.set_title("paper, Table 3 (MMAR)", fontsize=9)
    fig.tight_layout()
    with replacing(path) as partial:
        fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- protocol


def item_outcomes(scores_path: str | Path) -> dict[str, bool]:
    """`{item id: correct}` from a run's `scores.json` (the evaluation runner's)."""
    scores = json.loads(Path(scores_path).read_text())
    return {item["id"]: item["status"] == "correct" for item in scores["items"]}


def finished(report_dir: Path, variant: str, seed: int) -> bool:
    """Whether that run is trained and scored: its `run.json` is written last."""
    return (report_dir / slug(variant, seed) / "run.json").is_file()


def run_protocol(out: Path, data_dir: Path, summary: dict, preset: dict[str, Any], seeds: Sequence[int],
                 parts_seed: int = 0) -> dict[str, Path]:
    """Train and score every variant x seed not yet scored, two at a time; then write the report into
    `out / "ablation"`. Returns the report's paths."""
    from transformers.utils import logging as transformers_logging

    from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

    t0 = time.time()
    report_dir = out / "ablation"
    runs = [(v, s) for s in seeds for v in VARIANTS]  # seed-major: a killed run leaves whole seeds done
    todo = [(v, s) for v, s in runs if not finished(report_dir, v, s)]
    print(f"ablation: {len(runs)} runs ({len(VARIANTS)} variants x {len(seeds)} seeds), {len(runs) - len(todo)} "
          f"already scored, {len(todo)} to train", flush=True)
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a dozen saving / loading bars would bury the progress lines
    try:
        for v, s in todo:  # one at a time: model building is not thread-safe
            if not (out / f"tiny-{slug(v, s)}" / "config.json").is_file():
                write_tiny_checkpoint(out / f"tiny-{slug(v, s)}", seed=parts_seed, projector_seed=s,
                                      num_audio_tokens=preset["num_audio_tokens"], **VARIANTS[v])
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
    evaluating, done, lock = threading.Lock(), [], threading.Lock()

    def report() -> dict[str, Path]:
        """The report over the runs scored so far (all of them once the protocol is through)."""
        return write_protocol_report(out, data_dir, summary, preset, runs, runs_trained=len(done),
                                     wall_seconds=time.time() - t0)

    def one_run(v: str, s: int) -> None:
        name, started = slug(v, s), time.time()
        train(out / name, out / f"tiny-{name}", data_dir / "train.jsonl", preset, seed=s, name=name)
        with evaluating:  # pipeline loading is not thread-safe; the other run keeps training meanwhile
            scores = evaluate(out / name, data_dir, report_dir / name)
        write_json_atomic(report_dir / name / "run.json", {"seconds": time.time() - started})
        with lock:
            done.append(name)
            elapsed = time.time() - t0
            eta = elapsed / len(done) * (len(todo) - len(done))
            print(f"ablation: {len(done)}/{len(todo)} runs done, {name} {scores['overall']['accuracy']:.1f} %; "
                  f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)
            report()  # kept current, so a protocol stopped early still leaves the report of what it finished

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(one_run, v, s) for v, s in todo]:
            future.result()
    return report()


def write_protocol_report(out: Path, data_dir: Path, summary: dict, preset: dict[str, Any],
                          runs: Sequence[tuple[str, int]], runs_trained: int = 0,
                          wall_seconds: float = 0.0) -> dict[str, Path]:
    """Summarise the `(variant, seed)` runs of `runs` that have scores under `out / "ablation"` and write the report
    there; returns its paths."""
    report_dir = out / "ablation"
    scored = [(v, s) for v, s in runs if finished(report_dir, v, s)]
    if not scored:
        raise FileNotFoundError(f"no scored run under {report_dir} yet")
    with open(data_dir / "heldout.jsonl", encoding="utf-8") as f:
        tasks = {row["id"]: row["task"] for row in map(json.loads, f) if row["choices"] is not None}
    correct = {}
    for v, s in scored:
        correct.setdefault(v, {})[s] = item_outcomes(report_dir / slug(v, s) / "scores.json")
    chance = summary["heldout_chance_accuracy"]
    n_train_rows = sum(c["multiple_choice"] + c["open"] for c in summary["counts"]["train"].values())
    run_seconds = [json.loads((report_dir / slug(v, s) / "run.json").read_text())["seconds"] for v, s in scored]
    meta = {"preset": preset, "runs_planned": len(runs), "runs_scored": len(scored), "n_train_rows": n_train_rows,
            "n_items": len(tasks), "n_heldout_clips": len({item.rsplit("-", 1)[0] for item in tasks}),
            "steps_per_run": preset["epochs"] * -(-n_train_rows // preset["batch_size"]),
            "chance_overall": chance["overall"], "run_seconds_total": sum(run_seconds),
            "runs_trained": runs_trained, "wall_seconds": wall_seconds}
    return write_report(summarise(correct, tasks, chance=chance["overall"]), report_dir, chance["per_task"], meta)
