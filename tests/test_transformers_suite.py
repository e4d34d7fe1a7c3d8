"""transformers' own `ModelTesterMixin` on a tiny TinyGiant, as a new user's CI would run it.

The mixin comes from the sdist of the installed transformers (PyPI ships `tests/test_modeling_common.py` in it), which
`install.sh` downloads, pinned to the installed version, and unpacks into `.venv/transformers-tests/`. The sdist
leaves out `tests/generation/` and `tests/exporters/`: `test_modeling_common` only subclasses or names their mixins,
so they are stood in by empty classes (generation is tested in `test_model.py`, `test_pipeline.py` and
`test_fast_path.py`).

`TinyGiantModelTester` is written the way transformers' audio models write theirs: one audio per sample, its N
placeholder tokens in the prompt, its log-mel windows, and the instruction mask of eq. 11.

Expectations of the mixin that cannot fit TinyGiant, each for one reason (`NOT_APPLICABLE`):
- the audio features depend on the question (eq. 11-13), so there is no `get_audio_features` without the intent query,
  and the mixin's multimodal-feature checks, which call it with the audio alone, do not apply;
- the three encoders are frozen (the paper trains only the projector and the LLM): they take no gradients, so the
  check that every parameter gets one is switched off with the mixin's own flag (`test_all_params_have_gradient`),
  and the gradient-checkpointing checks, which watch the model's first checkpointable layer (a frozen Whisper layer,
  run without gradients), are left out; `test_conformance.py` checks checkpointing on the language model's layers;
- the mixin's `generate` checks live in the `GenerationTesterMixin` the sdist leaves out.
"""

import importlib
import sys
import types
import unittest
from pathlib import Path

import torch

from configuration_tinygiant import TinyGiantConfig
from modeling_tinygiant import TinyGiantForConditionalGeneration

SUITE = Path(sys.prefix) / "transformers-tests" / "tests"
# Sibling modules of `test_modeling_common` that the sdist does not ship, and the mixin each must provide.
ABSENT_FROM_SDIST = {"generation.test_utils": "GenerationTesterMixin", "exporters.test_export": "ExportTesterMixin"}


def transformers_suite():
    """`test_modeling_common` of the installed transformers' sdist, imported as the package `transformers_suite`."""
    if not (SUITE / "test_modeling_common.py").is_file():
        raise RuntimeError(f"transformers' test suite is not unpacked in {SUITE}: run `bash install.sh`")
    package = types.ModuleType("transformers_suite")
    package.__path__ = [str(SUITE)]
    sys.modules["transformers_suite"] = package
    for name, mixin in ABSENT_FROM_SDIST.items():
        parent = types.ModuleType(f"transformers_suite.{name.split('.')[0]}")
        parent.__path__ = []
        module = types.ModuleType(f"transformers_suite.{name}")
        setattr(module, mixin, type(mixin, (), {}))
        sys.modules[parent.__name__], sys.modules[module.__name__] = parent, module
    return importlib.import_module("transformers_suite.test_modeling_common")


common = transformers_suite()


class TinyGiantModelTester:
    def __init__(self, parent, batch_size=2, text_tokens=7, num_audio_tokens=4, vocab_size=99):
        self.parent = parent
        self.batch_size = batch_size
        self.num_audio_tokens = num_audio_tokens
        self.seq_length = 1 + num_audio_tokens + text_tokens  # a token, the audio, the question
        self.vocab_size = vocab_size
        self.audio_token_id = 3  # low, so that shrinking the vocabulary (the resize tests) keeps it
        self.is_training = True
        # What the mixin reads off a tester (the language model's shape).
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4

    def get_config(self) -> TinyGiantConfig:
        text_config = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=37,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
        whisper_config = dict(num_mel_bins=128, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                              encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                              vocab_size=64, max_source_positions=1500, max_target_positions=16, pad_token_id=63,
                              bos_token_id=63, eos_token_id=63, decoder_start_token_id=62)
        tower = dict(patch_embeds_hidden_size=8, hidden_size=64, depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8])
        return TinyGiantConfig(
            whisper_config=whisper_config, htsat_config=tower,
            clap_config={**tower, "patch_embeds_hidden_size": 6, "hidden_size": 48},
            text_config=text_config, num_audio_tokens=self.num_audio_tokens, projector_layers=1, projector_heads=4,
            cgmlp_dim=48, ffn_dim=64, projector_dropout=0.0, audio_token_id=self.audio_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        input_ids[:, 1 : 1 + self.num_audio_tokens] = self.audio_token_id
        instruction_mask = torch.zeros_like(input_ids)
        instruction_mask[:, 1 + self.num_audio_tokens :] = 1
        frames = config.whisper_frames_per_window
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "instruction_mask": instruction_mask,
            # One audio per sample, one window each: every tensor has the batch as its first dimension.
            "whisper_input_features": torch.randn(self.batch_size, 128, 2 * frames, generator=generator),
            "clap_input_features": torch.randn(self.batch_size, 1, 1001, 64, generator=generator),
            "whisper_lengths": torch.tensor([frames, frames // 2] * (self.batch_size // 2)),
            "htsat_lengths": torch.tensor([config.htsat_frames_per_window, 16] * (self.batch_size // 2)),
        }
        return config, inputs


# Mixin tests that cannot fit TinyGiant (by name, with their parameterised variants), each with its reason (see the
# module docstring). They are left out of the class, not skipped: there is nothing missing to come back to.
NOT_APPLICABLE = {
    "test_get_audio_features_": "the audio features need the question's intent query (eq. 11-13)",
    # It watches the model's first checkpointable layer, a frozen Whisper layer that runs without gradients;
    # test_conformance.py checks checkpointing on the language model's layers instead.
    "test_training_gradient_checkpointing": "the first checkpointable layer is a frozen encoder's",
}


class TinyGiantModelTest(common.ModelTesterMixin, unittest.TestCase):
    # As transformers' own audio LLMs (Qwen2-Audio, Audio Flamingo 3) test theirs: the generating class, which holds
    # `TinyGiantModel` (the mixin's training checks need a loss).
    all_model_classes = (TinyGiantForConditionalGeneration,)
    # The mixin's generate checks live in the GenerationTesterMixin the sdist leaves out: none run here.
    all_generative_model_classes = ()
    _is_composite = True
    test_torch_exportable = False  # the sdist ships no ExportTesterMixin
    test_all_params_have_gradient = False  # the frozen encoders take none (the mixin's switch for this)

    def setUp(self):
        self.model_tester = TinyGiantModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels:  # the mixin knows only transformers' own causal LMs
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
        return inputs_dict


for _name in [name for name in dir(TinyGiantModelTest) if name.startswith(tuple(NOT_APPLICABLE))]:
    setattr(TinyGiantModelTest, _name, None)
