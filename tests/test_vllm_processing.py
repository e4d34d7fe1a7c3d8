"""The plugin's multimodal processor, cached against uncached, in the spirit of vLLM's own
`tests/models/multimodal/processing/test_common.py` (`test_processing_correctness`), in the vLLM environment.

As there: random clips, prompts with 0 to 3 audios, a fixed clip that recurs at hit rates 0.3, 0.5 and 1.0 (so the
processor cache hits), one audio passed bare as well as in a list, and each prompt given as text and as token ids.
What TinyGiant adds: every set of clips is asked about in three prompts, vLLM's dummy text (markers only, which
TinyGiant's processor reads as one user turn) and two chat prompts with different questions. Then:
- the processor with vLLM's processor cache gives exactly what the one without it gives (token ids, every tensor of
  every item, placeholders, hashes);
- two questions about the same clips get the same audio features but their own instruction tokens and hashes (a cache
  keyed by the audio alone would hand the second question the first's);
- the instruction tokens are those transformers' `TinyGiantProcessor` marks for eq. 11 in the same prompt, and the
  features equal the processor's.
"""

import json
import subprocess
from pathlib import Path

from test_vllm import QUESTIONS

from tinygiant.serving.vllm_server import vllm_executable

BATCHES = 8  # sets of clips per hit rate (vLLM's test draws 32)
HIT_RATES = (0.3, 0.5, 1.0)

SCRIPT = """
import json, sys
import numpy as np
import torch
from tinygiant_vllm import register
register()
from vllm.config import ModelConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.cache import MultiModalProcessorOnlyCache

folder, questions, hit_rates, batches = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
config = ModelConfig(model=folder, trust_remote_code=True, dtype="float32", seed=0, limit_mm_per_prompt={"audio": 3})
baseline = MULTIMODAL_REGISTRY.create_processor(config)
cached = MULTIMODAL_REGISTRY.create_processor(config)
hf_processor = baseline.info.get_hf_processor()
tokenizer = baseline.info.get_tokenizer()
rng = np.random.RandomState(0)
recurring = (rng.uniform(-0.5, 0.5, 12000).astype(np.float32), 16000)


def random_clip():
    rate = int(rng.choice([8000, 16000, 22050, 44100]))
    return rng.uniform(-0.5, 0.5, int(rate * rng.uniform(0.1, 2.0))).astype(np.float32), rate


def prompts(count):
    yield baseline.dummy_inputs.get_dummy_text({"audio": count})
    for question in questions:
        content = [{"type": "audio"}] * count + [{"type": "text", "text": question}]
        yield hf_processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                               add_generation_prompt=True)


def field(result, name):
    return [item[name].data for item in result["mm_kwargs"].get("audio", [])]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


report = []
for hit_rate in hit_rates:
    cache = MultiModalProcessorOnlyCache(config)
    counts = {"prompts": 0, "audios": 0, "prompts_by_audios": [0, 0, 0, 0]}
    for batch in range(batches):
        clips = [recurring if rng.rand() < hit_rate else random_clip() for _ in range(rng.randint(4))]
        data = {"audio": clips[0] if len(clips) == 1 and rng.rand() < 0.5 else clips}
        per_prompt = []
        for text in prompts(len(clips)):
            where = f"hit rate {hit_rate}, batch {batch}, {len(clips)} audios, prompt {text!r}"
            ids = tokenizer.encode(text)
            results = [processor(prompt, processor.info.parse_mm_data(data), cache=use)
                       for processor, use in ((baseline, None), (cached, cache)) for prompt in (text, ids)]
            for other in results[1:]:
                assert other == results[0], where
            per_prompt.append(results[0])
            counts["prompts"] += 1
            counts["audios"] += len(clips)
            counts["prompts_by_audios"][len(clips)] += 1
            if clips:  # transformers' processor on the same prompt and clips
                expected = hf_processor(text=text, audio=[{"array": a, "sampling_rate": r} for a, r in clips],
                                        return_tensors="pt")
                instruction = expected["input_ids"][0][expected["instruction_mask"][0].bool()]
                assert all(torch.equal(ids, instruction) for ids in field(results[0], "instruction_ids")), where
                assert torch.equal(torch.cat(field(results[0], "whisper_input_features")),
                                   expected["whisper_input_features"]), where
                assert torch.equal(torch.cat(field(results[0], "clap_input_features")),
                                   expected["clap_input_features"]), where
        if clips:  # the two questions: same features, their own instruction tokens and hashes
            first, second = per_prompt[1:]
            assert same(field(first, "whisper_input_features"), field(second, "whisper_input_features"))
            assert not any(torch.equal(a, b) for a, b in zip(field(first, "instruction_ids"),
                                                            field(second, "instruction_ids")))
            assert not set(first["mm_hashes"]["audio"]) & set(second["mm_hashes"]["audio"])
    stats = cache.make_stats()
    report.append({"hit_rate": hit_rate, **counts, "cache_hits": stats.hits, "cache_lookups": stats.total})
print(json.dumps(report))
"""


def test_cached_and_uncached_processing_are_identical(tiny_dir):
    python = str(Path(vllm_executable()).with_name("python"))
    run = subprocess.run([python, "-c", SCRIPT, str(tiny_dir), json.dumps(QUESTIONS), json.dumps(HIT_RATES),
                          str(BATCHES)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-5000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert [row["hit_rate"] for row in report] == list(HIT_RATES)
    for row in report:
        assert row["prompts"] == 3 * BATCHES
        # The cached processor really was asked for items it had: each clip set is processed twice per prompt.
        assert row["cache_hits"] > 0, row
    assert sum(row["prompts_by_audios"][0] for row in report) > 0  # prompts without audio were among them
    assert all(sum(row["prompts_by_audios"][n] for row in report) > 0 for n in (1, 2, 3))
