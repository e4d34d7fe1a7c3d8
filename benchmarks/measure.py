"""What the benchmark scripts measure with; none of them imports another.

- clocks and memory: `StepClock` (when each generated token's logits are ready), `decode_rate`, `memory_mb`;
- TinyGiant at full size with random weights (`build_random_model`), its processor with a small tokenizer
  (`make_processor`) and a test clip (`make_audio`);
- the follow-up question's time to first token through the audio cache (`followup_ttft`; `followup_ttft.py`, and the
  best path of `benchmark_tinygiant.py`);
- the peer, Qwen2.5-Omni-3B's thinker built from its published sizes with random weights (`measure_peer`;
  `peer_qwen_omni.py`, and the peer step of `benchmark_tinygiant.py`);
- a run's report written as `results/NAME.json` and `.md` (`write_results`).
"""

import time
from pathlib import Path

import numpy as np
import torch

from modeling_tinygiant import TinyGiantForConditionalGeneration

# Qwen3's chat token ids (Qwen2.5's are the same): <|im_start|>, <|im_end|>, <|endoftext|>, "user", "assistant", "\n".
QWEN3_IM_START, QWEN3_IM_END, QWEN3_PAD = 151644, 151645, 151643
USER, ASSISTANT, NEWLINE = 872, 77091, 198


RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path(__file__).resolve().parents[1] / "runs" / "benchmarks"  # a run's report, unless it updates RESULTS


def add_output_arguments(parser, name: str) -> None:
    """`--output-dir` (default `runs/benchmarks/`) and `--update-results` (the committed `results/` instead): running
    a benchmark never overwrites the figures the pages quote unless asked to."""
    parser.add_argument("--output-dir", type=Path, default=RUNS,
                        help=f"where {name}.json goes (default: runs/benchmarks)")
    parser.add_argument("--update-results", action="store_true",
                        help=f"write benchmarks/results/{name}.json, the committed figures, instead")


def output_folder(args) -> Path:
    return RESULTS if args.update_results else args.output_dir


def write_results(name, report, markdown, folder=None):
    """`NAME.json` (the report) and `NAME.md` (its `markdown`) in `folder` (default `results/`), atomically; prints
    the markdown."""
    from tinygiant.files import write_json_atomic, write_text_atomic

    folder = Path(folder or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{name}.json", report, indent=1)
    write_text_atomic(folder / f"{name}.md", markdown)
    print(markdown)
    print(f"wrote {folder / name}.json and .md in {report['wall_s']} s")


# ----------------------------------------------------------------------------- clocks and memory


class StepClock:
    """A logits processor that only records when each generated token's logits are ready (prefill, then each step)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def decode_rate(times):
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None


def memory_mb():
    """(current RSS, peak RSS) of this process in MB, from /proc (Linux) or resource (peak only)."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except OSError:
        import resource

        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- TinyGiant, random weights


def on_meta(model_class, config, dtype):
    """`model_class(config)` built on the meta device (no memory, no init).

    The default dtype is switched while building so that parameters are created in `dtype` while the buffers that
    transformers computes in float32 (rotary frequencies) stay float32, as with `from_pretrained(dtype=...)`.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            return model_class(config)
    finally:
        torch.set_default_dtype(previous)


def build_random_model(config, dtype=torch.bfloat16, device="cpu", seed=0):
    """Build on the meta device (`on_meta`), then allocate on `device` and initialise randomly."""
    model = on_meta(TinyGiantForConditionalGeneration, config, dtype)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()  # each sub-model's own `_init_weights` (also rebuilds buffers), then re-ties the LM head
    model.model.freeze_audio_encoders()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = QWEN3_IM_END, QWEN3_PAD
    return model.eval()


def make_processor():
    """The real feature-extraction path (TinyGiantProcessor) with a small local tokenizer; text is not tokenized."""
    from transformers import ClapFeatureExtractor, WhisperFeatureExtractor

    from processing_tinygiant import TinyGiantProcessor
    from tinygiant.hub.tiny_checkpoint import train_tokenizer

    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<audio>"]})
    return TinyGiantProcessor(ClapFeatureExtractor(truncation="rand_trunc"), WhisperFeatureExtractor(feature_size=128),
                              tokenizer)


def make_audio(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


# ----------------------------------------------------------------------------- follow-up time to first token


def conversation_ids(config, turns, answer_tokens=60, seed=0):
    """Random ids laid out like a chat with one clip: user (audio + question), then for each later question the
    previous answer and the new user turn; ends with the generation prompt. `turns` is the question token counts."""
    g = torch.Generator().manual_seed(seed)
    ids, instruction = [QWEN3_IM_START, USER, NEWLINE] + [config.audio_token_id] * config.num_audio_tokens, []
    for i, question_tokens in enumerate(turns):
        if i:
            ids += torch.randint(1000, 100000, (answer_tokens,), generator=g).tolist()
            ids += [QWEN3_IM_END, NEWLINE, QWEN3_IM_START, USER, NEWLINE]
        instruction.append((len(ids), len(ids) + question_tokens))
        ids += torch.randint(1000, 100000, (question_tokens,), generator=g).tolist()
        ids += [QWEN3_IM_END, NEWLINE, QWEN3_IM_START, ASSISTANT, NEWLINE]
    # Random weights give the ids no meaning: a small vocabulary (the tiny model's) takes them modulo its size.
    vocab = min(config.text_config.vocab_size, config.audio_token_id)
    input_ids = torch.tensor([[i if i == config.audio_token_id else i % vocab for i in ids]])
    mask = torch.zeros_like(input_ids)
    for start, end in instruction:
        mask[0, start:end] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "instruction_mask": mask}


def followup_ttft(model, processor, audio, sampling_rate=16000, question_tokens=(100, 30), new_tokens=8,
                  generate=None, compare_without_cache=True):
    """Seconds to the first token of the first question and of a follow-up about `audio`, with the audio cache.

    `generate` is the generation callable (default `model.generate`; e.g. a llama.cpp decoder's). Returns a dict:
    `first_s`, `followup_s` (cache hit), `ratio` (follow-up / first), `prompt_tokens`, and with
    `compare_without_cache` also `followup_without_cache_s` and `greedy_identical` (the follow-up's `new_tokens`
    greedy tokens with and without the cache). Without that comparison, run it on a warmed-up model.
    """
    config = model.config
    first = conversation_ids(config, question_tokens[:1])
    follow_up = conversation_ids(config, question_tokens)
    generate = generate or model.generate

    def run(prompt, tokens=1):
        start = time.perf_counter()
        features = processor.extract_audio_features([audio], sampling_rate)
        inputs = {**prompt, **{k: torch.as_tensor(v) for k, v in features.items()}}
        with torch.no_grad():
            out = generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - start, out[:, prompt["input_ids"].shape[1]:]

    result = {"prompt_tokens": (first["input_ids"].shape[1], follow_up["input_ids"].shape[1])}
    model.disable_audio_cache()
    if compare_without_cache:
        _, tokens_without = run(follow_up, new_tokens)  # also warms up every kernel once
        result["followup_without_cache_s"], _ = run(follow_up)
    cache = model.enable_audio_cache(max_items=32)
    result["first_s"], _ = run(first)
    result["followup_s"], _ = run(follow_up)
    if compare_without_cache:
        _, tokens_with = run(follow_up, new_tokens)
        result["greedy_identical"] = bool(torch.equal(tokens_with, tokens_without))
    assert cache.misses == 1 and cache.hits >= 1, (cache.misses, cache.hits)
    model.disable_audio_cache()
    result["ratio"] = result["followup_s"] / result["first_s"]
    return result


# ----------------------------------------------------------------------------- the peer


PEER_NAME = "Qwen2.5-Omni-3B thinker"
# Qwen/Qwen2.5-Omni-3B `thinker_config` (config.json): the Whisper-large-sized audio encoder with 100-frame attention
# windows, projecting to the 36-layer Qwen2.5-3B-shaped LLM.
AUDIO_3B = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
                max_source_positions=1500, n_window=100, output_dim=2048)
TEXT_3B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=False)
AUDIO_SMALL = dict(AUDIO_3B, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                   output_dim=256)
# hidden_size 256 over 2 heads: head_dim 128, as its mrope sections need.
TEXT_SMALL = dict(TEXT_3B, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2)


def build_thinker(small=False, dtype=torch.bfloat16, attn_implementation="sdpa"):
    """The thinker (`small`: a miniature of the same structure), built on the meta device, then materialised with
    random weights; its vision tower is dropped first, as an audio question never runs it."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config = Qwen2_5OmniThinkerConfig(audio_config=AUDIO_SMALL if small else AUDIO_3B,
                                      text_config=TEXT_SMALL if small else TEXT_3B)
    # Token ids of its config.json that the thinker's rope-index code reads but whose defaults the class lacks.
    config.vision_start_token_id, config.vision_end_token_id, config.vision_token_id = 151652, 151653, 151654
    config._attn_implementation = attn_implementation
    for sub in (config.audio_config, config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    model = on_meta(Qwen2_5OmniThinkerForConditionalGeneration, config, dtype)
    model.model.visual = None  # never allocated: no image or video input here
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02) if tensor.dim() > 1 else tensor.fill_(1.0 if "norm" in name else 0.0)
    _rebuild_computed_buffers(model)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, QWEN3_IM_END
    return model.eval()


def _rebuild_computed_buffers(model):
    """Buffers computed at construction (rotary frequencies, sinusoidal positions) were left empty by `to_empty`."""
    for module in model.modules():
        if hasattr(module, "original_inv_freq") and hasattr(module, "rope_init_fn"):
            inv_freq, module.attention_scaling = module.rope_init_fn(module.config, "cpu")
            module.inv_freq, module.original_inv_freq = inv_freq, inv_freq
        if type(module).__name__ == "SinusoidsPositionEmbedding":
            length, channels = module.positional_embedding.shape
            log_timescale = torch.log(torch.tensor(10000.0)) / (channels // 2 - 1)
            inv = torch.exp(-log_timescale * torch.arange(channels // 2).float())
            scaled = torch.arange(length)[:, None].float() * inv[None, :]
            module.positional_embedding = torch.cat([scaled.sin(), scaled.cos()], dim=1)


def make_inputs(model, waveform, question_tokens, seed=0):
    """Its processor's layout for one clip: 128-bin log-mels of the clip's length, and a chat prompt with one audio
    token per output frame of its encoder between the audio start / end tokens, then the question."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128)
    mels = extractor(waveform, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                     return_tensors="pt")
    frames = int(mels["attention_mask"].sum())
    _, audio_tokens = model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(frames))
    config = model.config
    question = torch.randint(1000, 100000, (question_tokens,), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([torch.tensor([QWEN3_IM_START, USER, NEWLINE, config.audio_start_token_id]),
                     torch.full((int(audio_tokens),), config.audio_token_id),
                     torch.tensor([config.audio_end_token_id]), question,
                     torch.tensor([QWEN3_IM_END, NEWLINE, QWEN3_IM_START, ASSISTANT, NEWLINE])])[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": mels["input_features"],
            "feature_attention_mask": mels["attention_mask"]}


def measure_peer(waveform, question_tokens=100, new_tokens=8, small=False):
    """Time to first token (from the waveform), batch-1 decode tok/s and the process's peak RSS, greedy, bf16."""
    from transformers import LogitsProcessorList

    model = build_thinker(small)
    result = {"name": PEER_NAME + (" (small)" if small else ""), "attn_implementation": "sdpa",
              "parameters": sum(p.numel() for p in model.parameters()), "rss_after_build_mb": round(memory_mb()[0])}

    def generate(tokens, audio=waveform):
        clock = StepClock()
        start = time.perf_counter()
        inputs = make_inputs(model, audio, question_tokens)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           logits_processor=LogitsProcessorList([clock]))
        return clock.times[0] - start, decode_rate(clock.times), inputs["input_ids"].shape[1]

    generate(2, waveform[: 10 * 16000])  # warm-up on a 10 s clip, as TinyGiant's
    result["ttft_s"], result["decode_tokens_per_s"], result["prompt_tokens"] = generate(new_tokens)
    result["peak_rss_mb"] = round(memory_mb()[1])
    return result
