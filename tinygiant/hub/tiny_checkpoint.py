"""A tiny, randomly initialised TinyGiant built through the same code path as the real one.

`save_tiny_components` writes miniature stand-ins for the four pretrained parts, each in the format of its
Hub repo (a Whisper model with its feature extractor, two CLAP models with theirs, a Qwen3 causal LM with a
ChatML tokenizer); `write_tiny_checkpoint` assembles them with `tinygiant.hub.assemble.from_components` and saves a
complete checkpoint folder (`tinygiant.hub.publish.save_checkpoint`). Tests, demos and offline users build on it:

    tinygiant tiny-checkpoint OUT_DIR        # or: python -m tinygiant.hub.tiny_checkpoint OUT_DIR
"""

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from modeling_tinygiant import TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor
from tinygiant.hub.assemble import from_components
from tinygiant.hub.publish import save_checkpoint

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3 keeps <think> and </think> as added tokens that decoding does not skip.
THINK_TOKENS = ["<think>", "</think>"]
CORPUS = """You are an audio deep-thinking model. Upon receiving a question, please respond in two parts: <THINK> and
<RESPONSE>. The <THINK> section should be further divided into four parts: <PLANNING>, <CAPTION>, <REASONING>,
and <SUMMARY>. system user assistant What is the sound? How many beeps are there? Which tone is higher, the first or
the second? What came first, the tone or the noise? Is this a single note or a chord? Is there speech in the clip?
I will listen to the clip and count the beeps. The clip contains one two three four short high beeps separated by
silence. A low tone is followed by a high tone. A burst of noise comes before a steady tone. Three notes sound
together, so it is a chord. A person is speaking. The answer is (a) (b) (c) (d) (e) (f) yes no. A dog barks, a car
passes, music plays, a man and a woman talk, birds sing, rain falls, a bell rings in the distance. 0 1 2 3 4 5 6 7 8 9
"""


def train_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen3's chat tokens, trained on a small fixed corpus (deterministic)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.add_tokens(THINK_TOKENS)
    return fast


def save_tiny_components(out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Write tiny Whisper, HTS-AT (tiny and "base") CLAP and Qwen3 parts to `out_dir`; returns their paths."""
    torch.manual_seed(seed)
    out = Path(out_dir)
    paths = {name: str(out / name) for name in ("whisper", "htsat", "clap", "llm")}

    whisper = WhisperForConditionalGeneration(
        WhisperConfig(
            num_mel_bins=128, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64, max_source_positions=1500,
            max_target_positions=16, pad_token_id=63, bos_token_id=63, eos_token_id=63, decoder_start_token_id=62,
        )
    )
    whisper.save_pretrained(paths["whisper"])
    WhisperFeatureExtractor(feature_size=128).save_pretrained(paths["whisper"])

    text_config = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=40)
    for name, width in (("htsat", 16), ("clap", 24)):
        audio_config = dict(patch_embeds_hidden_size=width, hidden_size=width * 8, depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 2, 4, 8])
        ClapModel(ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=16)).save_pretrained(
            paths[name]
        )
        ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(paths[name])

    tokenizer = train_tokenizer()
    llm = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
            tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.save_pretrained(paths["llm"])
    tokenizer.save_pretrained(paths["llm"])
    return paths


TINY_PROJECTOR = dict(projector_heads=4, cgmlp_dim=96, ffn_dim=128)


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, projector_seed: int | None = None,
                          **config_kwargs: Any) -> tuple[TinyGiantForConditionalGeneration, TinyGiantProcessor]:
    """Assemble a tiny TinyGiant from tiny parts and save it with its processor; returns `(model, processor)`.

    `seed` draws the four "pretrained" parts, `projector_seed` (default: `seed`) the projector's initial weights, so
    several training seeds can share the same encoders (and their cached features). `config_kwargs` override the tiny
    projector settings or the ablation switches.
    """
    with tempfile.TemporaryDirectory() as parts_dir:
        parts = save_tiny_components(parts_dir, seed=seed)
        torch.manual_seed(seed if projector_seed is None else projector_seed)
        model, processor = from_components(**parts, **{**TINY_PROJECTOR, **config_kwargs})
    save_checkpoint(model, processor, out_dir, training_summary="Untrained: tiny random parts, for tests and demos.")
    return model, processor


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tinygiant tiny-checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, _ = write_tiny_checkpoint(args.out_dir, seed=args.seed)
    print(f"wrote a tiny TinyGiant ({model.num_parameters() / 1e6:.2f} M parameters) to {args.out_dir}")


if __name__ == "__main__":
    main()
