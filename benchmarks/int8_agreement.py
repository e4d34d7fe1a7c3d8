"""The lossy inference switches against float on the synthetic held-out set: how often each answers as the float
model. Variants: int8 weights (`int8=True`), int8 weights and activations (`int8="w8a8"`), and Whisper on real
frames only (`whisper_trim_padding`, switched on at inference for a model trained without it).

    tinygiant demo --output-dir runs/demo                             # a trained tiny model and its data
    python benchmarks/int8_agreement.py runs/demo/model runs/demo/data

Every pipeline answers every held-out multiple-choice question through the MMAR harness (greedy, same prompts); the
script prints and writes `runs/benchmarks/int8-agreement.json` (`--update-results`: the committed
`results/int8-agreement.json`): accuracy of each, and per variant the share of questions
with the same chosen option as float and the share with byte-identical output text.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from measure import add_output_arguments, output_folder

from pipeline_tinygiant import load_pipeline
from tinygiant.eval.runner import predict
from tinygiant.eval.synthetic import BENCHMARK
from tinygiant.files import write_json_atomic

# name -> (the pipeline's `int8=`, `whisper_trim_padding`)
VARIANTS = {"float": (False, False), "int8": (True, False), "w8a8": ("w8a8", False), "trim_padding": (False, True)}


def answer_all(model_dir, data_dir, meta, out_dir, name):
    """`(predictions by id, scores, seconds)` of the pipeline of one variant."""
    int8, trim_padding = VARIANTS[name]
    pipe = load_pipeline(str(model_dir), int8=int8)
    pipe.model.config.whisper_trim_padding = trim_padding
    path = Path(out_dir) / f"{name}.jsonl"
    start = time.perf_counter()
    predict(meta, data_dir, pipe, path, batch_size=25, generate_kwargs={"max_new_tokens": 256, "system_prompt": None})
    seconds = time.perf_counter() - start
    records = BENCHMARK.read_predictions(path, meta)
    return records, BENCHMARK.score(meta, records), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained TinyGiant folder, e.g. runs/demo/model")
    parser.add_argument("data", help="its synthetic data folder, with eval-meta.jsonl and audio/")
    parser.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "float"],
                        choices=[v for v in VARIANTS if v != "float"])
    add_output_arguments(parser, "int8-agreement")
    args = parser.parse_args(argv)
    meta = BENCHMARK.load_folder(args.data).items
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: answer_all(args.model, args.data, meta, tmp, name) for name in ["float", *args.variants]}
    floats = runs["float"][0]
    report = {"model": str(args.model), "questions": len(meta),
              "accuracy_percent": {name: round(run[1]["overall"]["accuracy"], 1) for name, run in runs.items()},
              "seconds": {name: round(run[2], 1) for name, run in runs.items()}}
    for name in args.variants:
        other = runs[name][0]
        same_choice = sum(floats[i]["answer_prediction"] == other[i]["answer_prediction"] for i in floats)
        same_text = sum(floats[i]["answer_prediction"] == other[i]["answer_prediction"]
                        and floats[i]["thinking_prediction"] == other[i]["thinking_prediction"] for i in floats)
        report[name] = {"same_chosen_option_percent": round(100 * same_choice / len(meta), 1),
                        "same_reasoning_and_answer_percent": round(100 * same_text / len(meta), 1)}
    output = output_folder(args) / "int8-agreement.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
