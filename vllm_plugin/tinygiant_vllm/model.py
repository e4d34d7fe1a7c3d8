"""TinyGiant in vLLM: processing info, dummy inputs, the multimodal processor and the model, in that order.

The language model is vLLM's own Qwen3 (paged attention, continuous batching, tensor and pipeline parallelism). The
audio half, the three frozen encoders and the query-guided projector (eq. 1-15), is the checkpoint's own
`modeling_tinygiant.TinyGiantAudioModel`, loaded as `trust_remote_code` loads it: plain torch, written once.

The question is part of each audio item. The intent query (eq. 11) is the mean embedding of the user's instruction
tokens, so the projector's output depends on the question, while vLLM's `embed_multimodal` sees only multimodal
fields. So the processor finds the instruction tokens in the prompt (with TinyGiant's own processor, as transformers
does), and they travel with every audio item as `instruction_ids`. They also go into the item's processor kwargs,
which vLLM hashes: the processor cache, the encoder cache and the prefix cache then key on (audio, question), and a
second question about a clip never gets the first question's embeddings. What does not depend on the question, the
frozen encoders' outputs, is cached per clip inside the model (`AudioEncoderCache`, keyed by the audio's content), so
a follow-up question runs only the projector and the LLM, as in the transformers pipeline.

Each clip stays at its own sampling rate until TinyGiant's processor resamples it (soxr) once to 16 kHz for Whisper
and once to 48 kHz for HTS-AT/CLAP; vLLM's resampler is never used. Bad audio (not audio, empty, NaN samples, too
long) is refused there, in the API process, with a `ValueError` naming the problem: HTTP 400, not a crash.
"""

import dataclasses
import functools
import os
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

# The per-audio field (and processor kwarg) that carries the question's instruction token ids.
INSTRUCTION_IDS = "instruction_ids"
# Frozen-encoder outputs kept per clip in the model; 0 turns the cache off.
AUDIO_CACHE_ITEMS = int(os.environ.get("TINYGIANT_VLLM_AUDIO_CACHE", "32"))
# "1": the frozen encoders' linear layers as int8 with int8 activations on CPU (W8A8, the checkpoint's own
# `int8_tinygiant`, as the pipeline's `int8="w8a8"`; `tinygiant serve --engine vllm` sets it on CPUs where it is
# faster than bf16). Off by default: the paper's float encoders, whose outputs equal transformers'.
INT8_ENCODERS = os.environ.get("TINYGIANT_VLLM_INT8_ENCODERS", "0") == "1"
# The profiling run's audio: TinyGiant gives every audio the same N tokens, so one 30 s window stands for any length.
DUMMY_AUDIO_SECONDS = 30
DUMMY_SAMPLING_RATE = 16000


def checkpoint_code(model_config, qualified_name):
    """`module.attribute` from the checkpoint's own remote code (the `.py` files beside its config)."""
    return _checkpoint_code(model_config.model, model_config.revision, qualified_name)


@functools.lru_cache
def _checkpoint_code(model, revision, qualified_name):  # once per process: the processor asks on every request
    return get_class_from_dynamic_module(qualified_name, model, revision=revision)


# ---------------------------------------------------------------------------------------------------
# Processing info: the HF processor, the data parser, the limits
# ---------------------------------------------------------------------------------------------------


class TinyGiantAudioItems(AudioProcessorItems):
    """Audio items as `{"array", "sampling_rate"}` dicts, the form `processing_tinygiant.load_audio` reads."""

    def get_audio_length(self, item_idx):
        return len(self.get(item_idx)["array"])


class TinyGiantDataParser(MultiModalDataParser):
    """Keeps every clip at its own rate: TinyGiant's processor resamples it for each encoder."""

    def _parse_audio_data(self, data):
        if data is None:
            return None
        if self.is_embeddings(data) or isinstance(data, dict):
            raise ValueError("TinyGiant does not take precomputed audio embeddings: they depend on the question "
                             "(eq. 11), so send the audio itself")
        single = isinstance(data, tuple) or (isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 1)
        items = []
        for item in [data] if single else data:
            if item is None:  # a cached item named by its uuid
                items.append(None)
                continue
            if isinstance(item, dict) and set(item) == {"array", "sampling_rate"}:  # parsed before (cache misses)
                items.append(item)
                continue
            if not isinstance(item, tuple):
                raise ValueError("an audio needs its sampling rate: pass (samples, sampling_rate); arrays are never "
                                 "given a guessed rate")
            samples, sampling_rate = item
            samples = samples.numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
            items.append({"array": samples, "sampling_rate": sampling_rate})
        return TinyGiantAudioItems(items)


class TinyGiantProcessingInfo(BaseProcessingInfo):
    def get_hf_processor(self, **kwargs):
        kwargs.pop(INSTRUCTION_IDS, None)  # ours, not the HF processor's
        return self.ctx.get_hf_processor(**kwargs)

    def get_data_parser(self):
        return TinyGiantDataParser(expected_hidden_size=self._get_expected_hidden_size())

    def get_supported_mm_limits(self):
        return {"audio": None}

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        return {"audio": self.get_hf_config().num_audio_tokens}


# ---------------------------------------------------------------------------------------------------
# Dummy inputs for vLLM's profiling run
# ---------------------------------------------------------------------------------------------------


class TinyGiantDummyInputsBuilder(BaseDummyInputsBuilder[TinyGiantProcessingInfo]):
    def get_dummy_text(self, mm_counts):
        return self.info.get_hf_processor().audio_token * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        audios = self._get_dummy_audios(length=DUMMY_AUDIO_SECONDS * DUMMY_SAMPLING_RATE,
                                        num_audios=mm_counts.get("audio", 0), overrides=mm_options.get("audio"))
        # Silence would do for the shapes, but a little noise keeps every encoder path finite.
        noise = np.random.default_rng(0)
        return {"audio": [(0.01 * noise.standard_normal(len(a)).astype(np.float32), DUMMY_SAMPLING_RATE)
                          for a in audios]}


# ---------------------------------------------------------------------------------------------------
# The multimodal processor: each `<audio>` becomes N placeholders; the question travels with each audio
# ---------------------------------------------------------------------------------------------------


class TinyGiantMultiModalProcessor(BaseMultiModalProcessor[TinyGiantProcessingInfo]):
    def apply(self, inputs, timing_ctx):
        # Before vLLM hashes the items: the question's tokens become a processor kwarg, which the hash covers.
        instruction_ids = self.instruction_ids(inputs.prompt)
        kwargs = {**inputs.hf_processor_mm_kwargs, INSTRUCTION_IDS: instruction_ids}
        return super().apply(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)

    def instruction_ids(self, prompt_ids):
        """The prompt's instruction tokens (user turns, no placeholders), as TinyGiantProcessor marks them for eq. 11.

        The prompt holds one `<audio>` per audio here; the processor expands them as transformers does, so the
        tokens and the mask are the ones the transformers model averages.
        """
        processor = self.info.get_hf_processor()
        text = self.info.get_tokenizer().decode(prompt_ids)
        markers = text.count(processor.audio_token)
        encoded = processor(text=text, audio=[None] * markers, extract_audio_features=False, return_tensors="np")
        return encoded["input_ids"][0][encoded["instruction_mask"][0].astype(bool)].astype(np.int64)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        instruction_ids = torch.from_numpy(np.asarray(hf_kwargs[INSTRUCTION_IDS], dtype=np.int64))
        audios = hf_data.get("audio", [])
        features = self.info.get_hf_processor().extract_audio_features(audios)  # ValueError names a bad clip
        out = {name: torch.from_numpy(np.asarray(value)) for name, value in features.items()}
        out[INSTRUCTION_IDS] = [instruction_ids] * len(audios)
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        config = self.info.get_hf_config()
        windows_per_audio = checkpoint_code(self.info.ctx.model_config, "modeling_tinygiant.windows_per_audio")
        lengths = {name: hf_inputs.get(name, torch.zeros(0, dtype=torch.long))
                   for name in ("whisper_lengths", "htsat_lengths")}
        return dict(
            whisper_input_features=MultiModalFieldConfig.flat_from_sizes(
                "audio", windows_per_audio(lengths["whisper_lengths"], config.whisper_frames_per_window)),
            clap_input_features=MultiModalFieldConfig.flat_from_sizes(
                "audio", windows_per_audio(lengths["htsat_lengths"], config.htsat_frames_per_window)),
            whisper_lengths=MultiModalFieldConfig.batched("audio"),
            htsat_lengths=MultiModalFieldConfig.batched("audio"),
            instruction_ids=MultiModalFieldConfig.batched("audio"),
        )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        config = self.info.get_hf_config()
        placeholders = [config.audio_token_id] * config.num_audio_tokens
        return [
            PromptReplacement(
                modality="audio",
                target=[config.audio_token_id],
                replacement=PromptUpdateDetails.select_token_id(placeholders, embed_token_id=config.audio_token_id),
            )
        ]


# ---------------------------------------------------------------------------------------------------
# The model: the checkpoint's audio half, vLLM's Qwen3
# ---------------------------------------------------------------------------------------------------


def as_batch(value):
    """A batched field as one tensor: vLLM gives a list when the items' shapes differ."""
    return torch.cat([v.reshape(-1, *v.shape[1:]) for v in value]) if isinstance(value, (list, tuple)) else value


@MULTIMODAL_REGISTRY.register_processor(
    TinyGiantMultiModalProcessor, info=TinyGiantProcessingInfo, dummy_inputs=TinyGiantDummyInputsBuilder
)
class TinyGiantForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    # A TinyGiant checkpoint as transformers saves it, no conversion: `model.language_model.*` is the Qwen3 decoder,
    # `lm_head.*` its head (absent when tied), and every other `model.*` the audio half.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "audio_model.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality, i):
        if modality.startswith("audio"):
            return "<audio>"
        raise ValueError("TinyGiant takes audio and text only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.model_config = model_config = vllm_config.model_config
        self.config = config = model_config.hf_config
        self.mean_instruction_embedding = checkpoint_code(model_config, "modeling_tinygiant.mean_instruction_embedding")
        audio_model_class = checkpoint_code(model_config, "modeling_tinygiant.TinyGiantAudioModel")
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_model = audio_model_class(config)
        if AUDIO_CACHE_ITEMS > 0:
            self.audio_model.enable_audio_cache(AUDIO_CACHE_ITEMS)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen3ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_intent_query(self, instruction_ids):
        """q_intent per audio (eq. 11) from the instruction tokens that came with it."""
        embed = self.language_model.embed_input_ids
        queries = []
        for ids in instruction_ids:
            ids = ids.reshape(-1).to(self.audio_model.projector.input_proj.weight.device)
            embeds = embed(ids)[None]
            queries.append(self.mean_instruction_embedding(embeds, torch.ones(embeds.shape[:2], device=ids.device)))
        return torch.cat(queries)

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        if kwargs.get("whisper_input_features") is None:
            return []
        whisper_lengths = as_batch(kwargs["whisper_lengths"]).reshape(-1)
        htsat_lengths = as_batch(kwargs["htsat_lengths"]).reshape(-1)
        intent_query = None
        if self.config.use_intent_query:
            ids = kwargs[INSTRUCTION_IDS]
            intent_query = self.get_intent_query(list(ids) if isinstance(ids, torch.Tensor) else ids)
        audio_embeds = self.audio_model.get_audio_features(
            as_batch(kwargs["whisper_input_features"]),
            as_batch(kwargs["clap_input_features"]),
            whisper_lengths,
            htsat_lengths,
            intent_query,
        ).pooler_output
        return list(audio_embeds)  # (N, d_model) per audio, in prompt order

    def forward(self, input_ids, positions, intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
        if INT8_ENCODERS:  # after loading: the int8 weights are made from the float ones
            quantize_int8 = checkpoint_code(self.model_config, "int8_tinygiant.quantize_int8")
            audio = self.audio_model
            encoders = [e for e in (audio.whisper_encoder, audio.htsat_encoder, audio.clap_encoder) if e is not None]
            quantize_int8(audio, modules=encoders, activations="int8")
        return loaded
