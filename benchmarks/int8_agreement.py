"""int8 against float on the synthetic held-out set: how often `pipeline(..., int8=True)` answers as the float model.

    tinygiant demo --output-dir runs/demo                             # a trained tiny model and its data
    python benchmarks/int8_agreement.py runs/demo/model runs/demo/data

Both pipelines answer every held-out multiple-choice question through the MMAR harness (greedy, same prompts); the
script prints and writes `results/int8-agreement.json`: accuracy of each, the share of questions with the same chosen
option, and the share with byte-identical output text.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline_tinygiant import load_pipeline
from tinygiant.mmar import load_meta, load_predictions, predict, score


def answer_all(model_dir, data_dir, meta, out_dir, int8):
    """`(predictions by id, scores, seconds)` of the pipeline with float or int8 weights."""
    pipe = load_pipeline(str(model_dir), int8=int8)
    path = Path(out_dir) / f"{'int8' if int8 else 'float'}.jsonl"
    start = time.perf_counter()
    predict(meta, data_dir, pipe, path, batch_size=25, generate_kwargs={"max_new_tokens": 256, "system_prompt": None})
    seconds = time.perf_counter() - start
    records = load_predictions(path, meta)
    return records, score(meta, records), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained TinyGiant folder, e.g. runs/demo/model")
    parser.add_argument("data", help="its synthetic data folder, with mmar-meta.jsonl and audio/")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "int8-agreement.json"))
    args = parser.parse_args(argv)
    meta = load_meta(Path(args.data) / "mmar-meta.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: answer_all(args.model, args.data, meta, tmp, int8) for name, int8 in (("float", False),
                                                                                              ("int8", True))}
    (floats, float_scores, float_s), (ints, int_scores, int_s) = runs["float"], runs["int8"]
    same_choice = sum(floats[i]["answer_prediction"] == ints[i]["answer_prediction"] for i in floats)
    same_text = sum(floats[i]["answer_prediction"] == ints[i]["answer_prediction"]
                    and floats[i]["thinking_prediction"] == ints[i]["thinking_prediction"] for i in floats)
    report = {
        "model": str(args.model), "questions": len(meta),
        "accuracy_percent": {"float": round(float_scores["overall"]["accuracy"], 1),
                             "int8": round(int_scores["overall"]["accuracy"], 1)},
        "same_chosen_option_percent": round(100 * same_choice / len(meta), 1),
        "same_reasoning_and_answer_percent": round(100 * same_text / len(meta), 1),
        "seconds": {"float": round(float_s, 1), "int8": round(int_s, 1)},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
