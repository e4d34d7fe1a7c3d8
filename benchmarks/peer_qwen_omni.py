"""The peer of the benchmark: Qwen2.5-Omni-3B's thinker (audio encoder + 3B LLM), built from its published sizes with
random weights (meta device, then materialised; nothing is downloaded), run on its best transformers CPU path.

    python benchmarks/peer_qwen_omni.py            # prints its time to first token, decode tok/s and peak RSS
    python benchmarks/peer_qwen_omni.py --small    # a miniature with the same structure, to check the code path

`benchmark_tinygiant.py` runs `measure_peer` in a process of its own, so that the peak memory is the peer's.
The vision tower is dropped before the weights are allocated: an audio question never runs it.
"""

import argparse
import json
import time

import torch
from transformers import (
    LogitsProcessorList,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)

NAME = "Qwen2.5-Omni-3B thinker"
# Qwen/Qwen2.5-Omni-3B `thinker_config` (config.json): the Whisper-large-sized audio encoder with 100-frame attention
# windows, projecting to the 36-layer Qwen2.5-3B-shaped LLM.
AUDIO_3B = dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
                max_source_positions=1500, n_window=100, output_dim=2048)
TEXT_3B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=False)
AUDIO_SMALL = dict(AUDIO_3B, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32, output_dim=256)
TEXT_SMALL = dict(TEXT_3B, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,  # head_dim 128: its mrope sections
                  num_key_value_heads=2)
IM_START, IM_END, USER, ASSISTANT, NEWLINE = 151644, 151645, 872, 77091, 198


def build_thinker(small=False, dtype=torch.bfloat16, attn_implementation="sdpa"):
    config = Qwen2_5OmniThinkerConfig(audio_config=AUDIO_SMALL if small else AUDIO_3B,
                                      text_config=TEXT_SMALL if small else TEXT_3B)
    # Token ids of its config.json that the thinker's rope-index code reads but whose defaults the class lacks.
    config.vision_start_token_id, config.vision_end_token_id, config.vision_token_id = 151652, 151653, 151654
    config._attn_implementation = attn_implementation
    for sub in (config.audio_config, config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.model.visual = None  # never allocated: no image or video input here
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0, 0.02) if tensor.dim() > 1 else tensor.fill_(1.0 if "norm" in name else 0.0)
    _rebuild_computed_buffers(model)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, IM_END
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
    extractor = WhisperFeatureExtractor(feature_size=128)
    mels = extractor(waveform, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                     return_tensors="pt")
    frames = int(mels["attention_mask"].sum())
    _, audio_tokens = model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(frames))
    config = model.config
    question = torch.randint(1000, 100000, (question_tokens,), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([torch.tensor([IM_START, USER, NEWLINE, config.audio_start_token_id]),
                     torch.full((int(audio_tokens),), config.audio_token_id),
                     torch.tensor([config.audio_end_token_id]), question,
                     torch.tensor([IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE])])[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": mels["input_features"],
            "feature_attention_mask": mels["attention_mask"]}


def measure_peer(waveform, question_tokens=100, new_tokens=8, small=False):
    """Time to first token (from the waveform), batch-1 decode tok/s and the process's peak RSS, greedy, bf16."""
    from benchmark_tinygiant import StepClock, memory_mb

    model = build_thinker(small)
    result = {"name": NAME + (" (small)" if small else ""), "attn_implementation": "sdpa",
              "parameters": sum(p.numel() for p in model.parameters()), "rss_after_build_mb": round(memory_mb()[0])}

    def generate(tokens, audio=waveform):
        clock = StepClock()
        start = time.perf_counter()
        inputs = make_inputs(model, audio, question_tokens)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           logits_processor=LogitsProcessorList([clock]))
        decode = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0]) if len(clock.times) > 1 else None
        return clock.times[0] - start, decode, inputs["input_ids"].shape[1]

    generate(2, waveform[: 10 * 16000])  # warm-up on a 10 s clip, as TinyGiant's
    result["ttft_s"], result["decode_tokens_per_s"], result["prompt_tokens"] = generate(new_tokens)
    result["peak_rss_mb"] = round(memory_mb()[1])
    return result


def main(argv=None):
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t = np.arange(int(args.seconds * 16000)) / 16000
    print(json.dumps(measure_peer((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), small=args.small)))


if __name__ == "__main__":
    main()
