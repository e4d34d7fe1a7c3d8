"""TinyGiant in vLLM: processing info, dummy inputs, the multimodal processor and the model, in that order.

The language model is vLLM's own Qwen3 (paged attention, continuous batching, tensor and pipeline parallelism). The
audio half, the three frozen encoders and the query-guided projector (eq. 1-15), is the checkpoint's own
`modeling_tinygiant.TinyGiantAudioModel`, loaded as `trust_remote_code` loads it: plain torch, written once.

The question is part of each audio item. The intent query (eq. 11) is the mean embedding of the user's instruction
tokens, so the projector's output depends on the question, while vLLM's `embed_multimodal` sees only multimodal
fields. So the processor finds the instruction tokens in the prompt (by TinyGiant's own processor's rule, as
transformers does), and they travel with every audio item as `instruction_ids`, checked on arrival by the
`TinyGiantAudioInputs` schema. They also go into the item's processor kwargs, which vLLM hashes: the processor
cache, the encoder cache and the prefix cache then key on (audio, question), and a second question about a clip never
gets the first question's embeddings. What does not depend on the question, the
frozen encoders' outputs, is cached per clip inside the model (`AudioEncoderCache`, keyed by the audio's content), so
a follow-up question runs only the projector and the LLM, as in the transformers pipeline.

Each clip stays at its own sampling rate until TinyGiant's processor resamples it (soxr) once to 16 kHz for Whisper
and once to 48 kHz for HTS-AT/CLAP; vLLM's resampler is never used. Bad audio (not audio, empty, NaN samples, too
long) is refused there, in the API process, with a `ValueError` naming the problem: HTTP 400, not a crash.

LoRA: the model is `SupportsLoRA` on its language model (vLLM's Qwen3, whose fused `qkv_proj` / `gate_up_proj` take
a PEFT adapter's separate projections through `packed_modules_mapping`), so `vllm serve DIR --enable-lora
--lora-modules name=ADAPTER_DIR ...` serves several fine-tunes of one base. The audio half takes no adapter weights.

Settings of the model (read when vLLM builds it, in the engine's worker), through `--hf-overrides`, which vLLM applies
to the checkpoint's config:
- `audio_cache_items` (default `$TINYGIANT_VLLM_AUDIO_CACHE`, else 32): clips whose frozen-encoder outputs are kept;
  0 turns the cache off.
- `int8_encoders` (default `$TINYGIANT_VLLM_INT8_ENCODERS` = "1", else false): the frozen encoders' linear layers as
  int8 with int8 activations (W8A8, the checkpoint's own `int8_tinygiant`, as the pipeline's `int8="w8a8"`). Off by
  default: the paper's float encoders, whose outputs equal transformers'.

    vllm serve DIR --trust-remote-code --reasoning-parser tinygiant --hf-overrides '{"int8_encoders": true}'
"""

import dataclasses
import functools
import os
from collections.abc import Iterable
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsLoRA, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.module_mapping import MultiModelKeys
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
    ProcessorInputs,
    PromptReplacement,
    PromptUpdateDetails,
)
from vllm.multimodal.processing.processor import MultiModalProcessingResult
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

# The per-audio field (and processor kwarg) that carries the question's instruction token ids.
INSTRUCTION_IDS = "instruction_ids"
DEFAULT_AUDIO_CACHE_ITEMS = 32
# The profiling run's audio: TinyGiant gives every audio the same N tokens, so one 30 s window stands for any length.
DUMMY_AUDIO_SECONDS = 30
DUMMY_SAMPLING_RATE = 16000


def checkpoint_code(model_config, qualified_name):
    """`module.attribute` from the checkpoint's own remote code (the `.py` files beside its config)."""
    return _checkpoint_code(model_config.model, model_config.revision, qualified_name)


@functools.lru_cache
def _checkpoint_code(model, revision, qualified_name):  # once per process: the processor asks on every request
    return get_class_from_dynamic_module(qualified_name, model, revision=revision)


def setting(config, attribute: str, environment_variable: str, default):
    """One of the model's settings (see the module docstring): the config's `attribute`, which `--hf-overrides` sets,
    else the environment variable, else `default`. Read when called, as the engine builds the model."""
    value = getattr(config, attribute, None)
    return value if value is not None else os.environ.get(environment_variable, default)


def audio_cache_items(config) -> int:
    """How many clips' frozen-encoder outputs the model keeps (0: none)."""
    return int(setting(config, "audio_cache_items", "TINYGIANT_VLLM_AUDIO_CACHE", DEFAULT_AUDIO_CACHE_ITEMS))


def int8_encoders(config) -> bool:
    """Whether the frozen encoders run as W8A8 int8."""
    return setting(config, "int8_encoders", "TINYGIANT_VLLM_INT8_ENCODERS", False) in (True, 1, "1", "true")


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
    def _cached_apply_hf_processor(self, inputs: ProcessorInputs, timing_ctx) -> MultiModalProcessingResult:
        """vLLM's processing, with the question's instruction tokens as a processor kwarg of every audio item.

        The one place where vLLM 0.32 hands a model's processor the prompt before the items are hashed and processed:
        with a processor cache and without one (`mm_processor_cache_gb=0`), both go through here. vLLM's own hashing
        (`_get_mm_hashes`) then covers the kwarg, so the processor cache, the encoder cache and the prefix cache key
        on (audio, question), and `_call_hf_processor` reads it for the items it processes.
        """
        if inputs.mm_data_items.get_all_counts().get("audio", 0):
            kwargs = {**inputs.hf_processor_mm_kwargs, INSTRUCTION_IDS: self.instruction_ids(inputs.prompt)}
            inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        return super()._cached_apply_hf_processor(inputs, timing_ctx)

    def instruction_ids(self, prompt_ids: list[int]) -> np.ndarray:
        """The prompt's instruction tokens (user turns, no placeholders), as TinyGiantProcessor marks them (eq. 11).

        vLLM gives the processor the prompt as token ids only (`ProcessorInputs.prompt`; a text prompt is tokenized
        before processing starts), while TinyGiant's instruction mask is defined on the text: the character spans of
        the user turns in the chat markup (`processing_tinygiant.TURN_PATTERN`), which a token-level rule would
        redefine (a role header's newline can merge with the content's into one token). So each token is decoded on
        its own, the pieces give the text and every token's character offsets, and the processor's own rule marks
        the tokens. The ids are the prompt's own: nothing is re-tokenized, so the mask is of exactly these tokens.
        """
        tokenizer = self.info.get_tokenizer()
        ids = np.asarray(prompt_ids, dtype=np.int64)
        pieces = tokenizer.batch_decode(ids[:, None].tolist()) if len(ids) else []
        ends = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
        offsets = np.stack([ends - [len(piece) for piece in pieces], ends], axis=-1).reshape(-1, 2)
        tokens = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        mask = self.info.get_hf_processor()._turn_mask(["".join(pieces)], offsets[None], tokens, "user",
                                                        fallback_to_all=True)
        return ids[mask[0].astype(bool)]

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


class TinyGiantAudioInputs(TensorSchema):
    """What `embed_multimodal` receives for the audios of one batch, in prompt order. Dimensions:
    - na: audios
    - nw: Whisper windows (30 s each), all audios together
    - nh: HTS-AT/CLAP windows (10 s each), all audios together
    - nwm / nhm: the Whisper and HTS-AT/CLAP mel bins (from the checkpoint's config)
    - nwt / nht: mel frames of one window
    - ni: one audio's instruction tokens (its question's; any length)
    """

    type: Literal["audio_features"] = "audio_features"
    whisper_input_features: Annotated[torch.Tensor, TensorShape("nw", "nwm", "nwt")]
    clap_input_features: Annotated[torch.Tensor, TensorShape("nh", 1, "nht", "nhm")]
    whisper_lengths: Annotated[torch.Tensor, TensorShape("na")]
    htsat_lengths: Annotated[torch.Tensor, TensorShape("na")]
    instruction_ids: Annotated[torch.Tensor | list[torch.Tensor], TensorShape("na", "ni", dynamic_dims={"ni"})]


def as_batch(value):
    """A field as one tensor: vLLM gives a list when the items' shapes differ."""
    return torch.cat([v.reshape(-1, *v.shape[1:]) for v in value]) if isinstance(value, (list, tuple)) else value


@MULTIMODAL_REGISTRY.register_processor(
    TinyGiantMultiModalProcessor, info=TinyGiantProcessingInfo, dummy_inputs=TinyGiantDummyInputsBuilder
)
class TinyGiantForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsLoRA):
    # A TinyGiant checkpoint as transformers saves it, no conversion: `model.language_model.*` is the Qwen3 decoder,
    # `lm_head.*` its head (absent when tied), and every other `model.*` the audio half. LoRA adapters' names (PEFT's
    # `base_model.model.model.language_model.*`) go through the same map.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.": "audio_model.",
        }
    )
    # vLLM's Qwen3 fuses these projections; an adapter trained on the separate ones is packed to match.
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def get_mm_mapping(self) -> MultiModelKeys:
        """LoRA goes on the language model only: the encoders are frozen, and the projector is trained in full (a
        fine-tune's projector is part of its merged checkpoint, not of an adapter)."""
        return MultiModelKeys.from_string_field(
            language_model="language_model.",
            connector="audio_model.projector.",
            tower_model=["audio_model.whisper_encoder.", "audio_model.htsat_encoder.", "audio_model.clap_encoder."],
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
        if audio_cache_items(config) > 0:
            self.audio_model.enable_audio_cache(audio_cache_items(config))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen3ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _parse_and_validate_audio_input(self, **kwargs: object) -> TinyGiantAudioInputs | None:
        if kwargs.get("whisper_input_features") is None:
            return None
        instruction_ids = kwargs[INSTRUCTION_IDS]
        return TinyGiantAudioInputs(
            whisper_input_features=as_batch(kwargs["whisper_input_features"]),
            clap_input_features=as_batch(kwargs["clap_input_features"]),
            whisper_lengths=as_batch(kwargs["whisper_lengths"]).reshape(-1),
            htsat_lengths=as_batch(kwargs["htsat_lengths"]).reshape(-1),
            instruction_ids=list(instruction_ids) if isinstance(instruction_ids, torch.Tensor) else instruction_ids,
            resolve_bindings={"nwm": self.config.whisper_config.num_mel_bins,
                              "nhm": self.config.htsat_config.num_mel_bins},
        )

    def get_intent_query(self, instruction_ids: list[torch.Tensor]) -> torch.Tensor:
        """q_intent per audio (eq. 11) from the instruction tokens that came with it."""
        embed = self.language_model.embed_input_ids
        device = self.audio_model.projector.input_proj.weight.device
        queries = []
        for ids in instruction_ids:
            embeds = embed(ids.reshape(-1).to(device))[None]
            queries.append(self.mean_instruction_embedding(embeds, torch.ones(embeds.shape[:2], device=device)))
        return torch.cat(queries)

    def _process_audio_input(self, audio_input: TinyGiantAudioInputs) -> list[torch.Tensor]:
        intent_query = self.get_intent_query(audio_input.instruction_ids) if self.config.use_intent_query else None
        audio_embeds = self.audio_model.get_audio_features(
            audio_input.whisper_input_features,
            audio_input.clap_input_features,
            audio_input.whisper_lengths,
            audio_input.htsat_lengths,
            intent_query,
        ).pooler_output
        return list(audio_embeds)  # (N, d_model) per audio, in prompt order

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        audio_input = self._parse_and_validate_audio_input(**kwargs)
        return [] if audio_input is None else self._process_audio_input(audio_input)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
        if int8_encoders(self.config):  # after loading: the int8 weights are made from the float ones
            quantize_int8 = checkpoint_code(self.model_config, "int8_tinygiant.quantize_int8")
            audio = self.audio_model
            encoders = [e for e in (audio.whisper_encoder, audio.htsat_encoder, audio.clap_encoder) if e is not None]
            quantize_int8(audio, modules=encoders, activations="int8")
        return loaded
