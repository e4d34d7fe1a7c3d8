"""Assemble TinyGiant from its four pretrained parts (Hub ids or local folders).

    from tinygiant.hub.assemble import from_components
    model, processor = from_components()          # the paper's parts: Whisper-large-v3-turbo, two HTS-AT, Qwen3-0.6B

The parts keep their weights; the projector starts random. `tinygiant.hub.tiny_checkpoint` runs the same code on
miniature parts saved in the same Hub formats, so tests exercise the real path offline.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    ClapAudioModelWithProjection,
    ClapFeatureExtractor,
    PreTrainedModel,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.utils import logging

from configuration_tinygiant import TinyGiantConfig
from modeling_tinygiant import QueryGuidedProjector, TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor

WHISPER = "openai/whisper-large-v3-turbo"
HTSAT = "laion/clap-htsat-unfused"
CLAP = "laion/larger_clap_general"
LLM = "Qwen/Qwen3-0.6B"


def build_processor(whisper: str | Path = WHISPER, htsat: str | Path = HTSAT, llm: str | Path = LLM,
                    **kwargs: Any) -> TinyGiantProcessor:
    """The processor from the parts' own preprocessing files, with the `<audio>` token added to the tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer.add_special_tokens({"additional_special_tokens": [kwargs.get("audio_token", "<audio>")]})
    tokenizer.padding_side = "left"  # batched generation; training collators ask for right padding
    return TinyGiantProcessor(
        ClapFeatureExtractor.from_pretrained(htsat), WhisperFeatureExtractor.from_pretrained(whisper), tokenizer,
        **kwargs,
    )


def from_components(whisper: str | Path = WHISPER, htsat: str | Path = HTSAT, clap: str | Path = CLAP,
                    llm: str | Path = LLM, dtype: torch.dtype | str | None = None,
                    **config_kwargs: Any) -> tuple[TinyGiantForConditionalGeneration, TinyGiantProcessor]:
    """Build `(model, processor)` from the pretrained parts.

    Loads the Whisper encoder, both HTS-AT audio towers and the LLM with their weights, builds the matching processor
    (adding the `<audio>` token) and initialises the projector. `config_kwargs` set `TinyGiantConfig` fields: the
    projector sizes, `num_audio_tokens` and the ablation switches `use_intent_query` / `use_clap_gate`.
    """
    processor = build_processor(whisper, htsat, llm, num_audio_tokens=config_kwargs.pop("num_audio_tokens", 300))
    whisper_model = load_part(WhisperModel, whisper, dtype)
    # CLAP checkpoints hold a whole ClapModel; this class reads just its audio tower (and projection).
    htsat_model = load_part(ClapAudioModelWithProjection, htsat, dtype).audio_model
    llm_model = load_part(AutoModelForCausalLM, llm, dtype)
    use_clap_gate = config_kwargs.get("use_clap_gate", True)
    clap_model = load_part(ClapAudioModelWithProjection, clap, dtype).audio_model if use_clap_gate else None
    config = TinyGiantConfig(
        whisper_config=whisper_model.config,
        htsat_config=htsat_model.config,
        clap_config=clap_model.config if use_clap_gate else None,
        text_config=llm_model.config,
        audio_token_id=processor.audio_token_id,
        num_audio_tokens=processor.num_audio_tokens,
        **config_kwargs,
    )
    if processor.audio_token_id >= config.text_config.vocab_size:
        llm_model.resize_token_embeddings(len(processor.tokenizer))
    # Build the skeleton without allocating or initialising weights, then put the loaded parts in place.
    with torch.device("meta"):
        model = TinyGiantForConditionalGeneration(config)
    model.model.whisper_encoder = whisper_model.encoder
    model.model.htsat_encoder = htsat_model
    model.model.clap_encoder = clap_model
    model.model.language_model = llm_model.model
    model.lm_head = llm_model.lm_head
    model.model.projector = QueryGuidedProjector(config).to(dtype=llm_model.dtype)
    model.model.projector.apply(model._init_weights)
    model.model.freeze_audio_encoders()
    model.generation_config = llm_model.generation_config
    return model, processor


def load_part(model_class: type[PreTrainedModel] | type[AutoModelForCausalLM], name_or_path: str | Path,
              dtype: torch.dtype | str | None) -> PreTrainedModel:
    """Load one pretrained part; every weight it needs must be in the checkpoint (others, such as CLAP's text
    tower, are skipped quietly)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{name_or_path} has no weights for {len(missing)} parameters of {model_class.__name__}, "
                         f"e.g. {missing[:3]}")
    return model
