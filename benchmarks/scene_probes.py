"""Which feature carries the answer to each synthetic question (scene or demo data)? Linear probes.

    tinygiant demo --ablation --seeds 3 --output-dir runs/ablation      # writes the data and the tiny checkpoints
    python benchmarks/scene_probes.py runs/ablation/tiny-full-seed0 runs/ablation/data
    python benchmarks/scene_probes.py runs/ablation/tiny-full-seed0 runs/ablation/data --trained runs/ablation/*-seed?

For every scene clip, the frozen encoders' outputs as the projector receives them (`TinyGiantModel.encode_audio`:
Whisper and HTS-AT frames pooled to N steps, the CLAP vector) are computed once; then, per question, a softmax
regression is fitted on the training clips and scored on the held-out clips, on each carrier: the N pooled Whisper
frames, the N HTS-AT frames, their time average, and the CLAP vector. Prints the table and writes
`runs/benchmarks/scene-probes.json` (`--update-results`: the committed `results/scene-probes.json`). A task the CLAP
vector answers and the frames do not is one the gate has a job on; a task the frames answer only when all N steps are
kept is one where pooling further would lose it.

`--trained RUN ...` also probes what each trained run's projector hands the LLM: its N audio embeddings for each clip,
with that task's question as the intent query (the frozen encoders are the same in every run of the protocol, so
the first checkpoint's features serve all). A run whose audio embeddings answer a question that its LLM gets wrong
lost it in the LLM, not in the projector.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from measure import add_output_arguments, output_folder

from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import question_messages
from processing_tinygiant import TinyGiantProcessor
from tinygiant.files import write_json_atomic


def encode_clips(model, processor, data_dir, split):
    """`(features by carrier, rows, clip index, encoded)` for the clips of `split`: each carrier is (clips, dim); rows
    are the jsonl rows; `encoded` holds each clip's `(whisper, htsat, clap)` as the projector takes them."""
    rows = [json.loads(line) for line in open(Path(data_dir) / f"{split}.jsonl", encoding="utf-8")]
    clips = list(dict.fromkeys(row["audio"] for row in rows))
    carriers = {"whisper frames": [], "htsat frames": [], "frames, time average": [], "clap vector": []}
    encoded = []
    start = time.perf_counter()
    for i, clip in enumerate(clips):
        mels = processor.extract_audio_features([str(Path(data_dir) / clip)])
        whisper, htsat, clap = model.model.encode_audio(*(torch.as_tensor(mels[k]) for k in (
            "whisper_input_features", "clap_input_features", "whisper_lengths", "htsat_lengths")))
        encoded.append((whisper, htsat, clap))
        carriers["whisper frames"].append(whisper[0].flatten().numpy())
        carriers["htsat frames"].append(htsat[0].flatten().numpy())
        carriers["frames, time average"].append(torch.cat([whisper[0].mean(0), htsat[0].mean(0)]).numpy())
        carriers["clap vector"].append(clap[0].numpy())
        if (i + 1) % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"  {split}: {i + 1}/{len(clips)} clips, ETA {elapsed / (i + 1) * (len(clips) - i - 1):.0f} s",
                  flush=True)
    index = {clip: i for i, clip in enumerate(clips)}
    return {k: np.stack(v) for k, v in carriers.items()}, rows, index, encoded


@torch.no_grad()
def audio_embeddings(model, processor, data_dir, task_row, encoded):
    """(clips, N * d_model): the audio embeddings a trained `model`'s projector gives every encoded clip, in one
    batch, under `task_row`'s question (asked as the MMAR harness asks it: no system turn)."""
    messages = question_messages(task_row["question"], task_row["choices"], system_prompt=None)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = processor(text=text, audio=[str(Path(data_dir) / task_row["audio"])], extract_audio_features=False)
    ids, mask = (prompt[k].expand(len(encoded), -1) for k in ("input_ids", "instruction_mask"))
    whisper, htsat, clap = (torch.cat(stream) for stream in zip(*encoded))
    embeds = model.model.embed_inputs(input_ids=ids, instruction_mask=mask, whisper_frames=whisper, htsat_frames=htsat,
                                      clap_vector=clap if model.config.use_clap_gate else None)
    placeholders = model.model.get_placeholder_mask(ids, None, num_audios=len(encoded))
    return embeds[placeholders].reshape(len(encoded), -1).float().numpy()


def probe(train_x, train_y, test_x, test_y, classes, steps=500):
    """Held-out accuracy (%) of an L2-regularised softmax regression on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, tx = (torch.tensor((a - mean) / std, dtype=torch.float32) for a in (train_x, test_x))
    y, ty = torch.tensor(train_y), torch.tensor(test_y)
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y).backward()
        optimizer.step()
    return 100 * (linear(tx).argmax(1) == ty).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a tiny checkpoint with the CLAP tower (e.g. runs/ablation/tiny-full-seed0)")
    parser.add_argument("data", help="the scene data folder (train.jsonl, heldout.jsonl, audio/)")
    parser.add_argument("--trained", nargs="*", default=[], help="trained runs of the protocol whose audio "
                        "embeddings to probe as well (e.g. runs/ablation/*-seed?)")
    add_output_arguments(parser, "scene-probes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = TinyGiantForConditionalGeneration.from_pretrained(args.model).eval()
    if model.model.clap_encoder is None:
        raise ValueError(f"{args.model} has no CLAP tower (use_clap_gate=False); probe a Full or w/o IQ checkpoint")
    processor = TinyGiantProcessor.from_pretrained(args.model, trust_remote_code=True)
    train, train_rows, train_index, train_encoded = encode_clips(model, processor, args.data, "train")
    test, test_rows, test_index, test_encoded = encode_clips(model, processor, args.data, "heldout")
    tasks = list(dict.fromkeys(row["task"] for row in train_rows))

    def labels(task, rows, index):
        picked = [r for r in rows if r["task"] == task]
        options = sorted({r["answer"] for r in train_rows if r["task"] == task})
        return [index[r["audio"]] for r in picked], [options.index(r["answer"]) for r in picked], len(options)

    splits = {task: (labels(task, train_rows, train_index), labels(task, test_rows, test_index)) for task in tasks}
    results = {}
    for task, ((ti, ty, classes), (hi, hy, _)) in splits.items():
        results[task] = {name: probe(train[name][ti], ty, test[name][hi], hy, classes) for name in train}
        results[task]["chance"] = 100 / classes
    for run in args.trained:  # each run loaded once; its projector runs once per task and split
        trained = TinyGiantForConditionalGeneration.from_pretrained(run).eval()
        trained_processor = TinyGiantProcessor.from_pretrained(run, trust_remote_code=True)
        for task, ((ti, ty, classes), (hi, hy, _)) in splits.items():
            row = next(r for r in test_rows if r["task"] == task)
            tx, hx = (audio_embeddings(trained, trained_processor, args.data, row, encoded)
                      for encoded in (train_encoded, test_encoded))
            results[task][f"audio embeddings of {Path(run).name}"] = probe(tx[ti], ty, hx[hi], hy, classes)
    names = [n for n in next(iter(results.values())) if n != "chance"]
    print("\nheld-out accuracy % of a linear probe, per carrier and task")
    print(f"{'carrier':42s} | " + " | ".join(f"{t:>16s}" for t in results))
    for name in [*names, "chance"]:
        print(f"{name:42s} | " + " | ".join(f"{cells[name]:16.1f}" for cells in results.values()))
    output = output_folder(args) / "scene-probes.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, {"num_audio_tokens": model.config.num_audio_tokens, "n_train_clips": len(train_index),
                               "n_heldout_clips": len(test_index), "probes": results})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
