"""TinyGiant configuration: three frozen audio encoders, a query-guided projector and a Qwen3 LLM.

The defaults are the paper's full-size model (arXiv 2606.08425, section 3): the Whisper-large-v3-turbo
encoder, HTS-AT tiny (the `laion/clap-htsat-unfused` audio tower), HTS-AT base (the
`laion/larger_clap_general` audio tower) and Qwen3-0.6B.
"""

from dataclasses import dataclass

from transformers import ClapAudioConfig, PretrainedConfig, Qwen3Config, WhisperConfig


@dataclass(frozen=True)
class AudioLayout:
    """The audio layout the encoders impose: Whisper reads 30 s windows at 16 kHz and gives 1500 frames (20 ms) per
    window; HTS-AT reads 10 s windows at 48 kHz and gives 32 time steps per window (after averaging its frequency
    axis). The processor cuts audio into these windows and the model pools their frames: both read them from here."""

    whisper_sampling_rate: int = 16000
    whisper_window_seconds: int = 30
    whisper_frames_per_window: int = 1500
    clap_sampling_rate: int = 48000
    htsat_window_seconds: int = 10
    htsat_frames_per_window: int = 32


AUDIO_LAYOUT = AudioLayout()


def whisper_large_v3_turbo_config() -> WhisperConfig:
    """`openai/whisper-large-v3-turbo` (only its 32-layer, 1280-d encoder is used)."""
    return WhisperConfig(
        num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
        decoder_layers=4, decoder_attention_heads=20, decoder_ffn_dim=5120, vocab_size=51866,
        max_source_positions=1500, max_target_positions=448, pad_token_id=50257, bos_token_id=50257,
        eos_token_id=50257, decoder_start_token_id=50258,
    )


def htsat_tiny_config() -> ClapAudioConfig:
    """HTS-AT tiny, the audio tower of `laion/clap-htsat-unfused` (768-d frames)."""
    return ClapAudioConfig(patch_embeds_hidden_size=96, depths=[2, 2, 6, 2], hidden_size=768)


def htsat_base_config() -> ClapAudioConfig:
    """HTS-AT base, the audio tower of `laion/larger_clap_general` (1024-d pooled vector)."""
    return ClapAudioConfig(patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], hidden_size=1024)


def qwen3_0_6b_config() -> Qwen3Config:
    """`Qwen/Qwen3-0.6B`."""
    return Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
    )


class TinyGiantConfig(PretrainedConfig):
    r"""
    Configuration of [`TinyGiantForConditionalGeneration`].

    Args:
        whisper_config (`dict` or `WhisperConfig`, *optional*):
            The Whisper model whose encoder gives the fine-grained 16 kHz stream F_w (eq. 1).
        htsat_config (`dict` or `ClapAudioConfig`, *optional*):
            The HTS-AT tower whose frames give the 48 kHz event stream F_h (eq. 2).
        clap_config (`dict` or `ClapAudioConfig`, *optional*):
            The CLAP audio tower whose pooled output is the global vector c_clap (eq. 3).
        text_config (`dict` or `Qwen3Config`, *optional*):
            The language model.
        num_audio_tokens (`int`, *optional*, defaults to 300):
            N: both temporal streams are adaptive-average-pooled to this many steps, and each audio fills this many
            placeholder tokens in the prompt.
        projector_layers (`int`, *optional*, defaults to 2):
            Number of E-Branchformer blocks (L in eq. 5-10).
        projector_heads (`int`, *optional*, defaults to 16):
            Attention heads of the self-attention branch and of the intent cross-attention (not given in the paper;
            16 heads of 64 dims for d_model=1024).
        cgmlp_dim (`int`, *optional*, defaults to 3072):
            Width of the convolution branch (Lin1's output, eq. 6); 3x d_model as in E-Branchformer.
        conv_kernel_size (`int`, *optional*, defaults to 17):
            Kernel of the depthwise convolution DConv_17 (eq. 6).
        ffn_dim (`int`, *optional*, defaults to 4096):
            Hidden width of the block's final FFN (eq. 10); 4x d_model.
        projector_dropout (`float`, *optional*, defaults to 0.1):
            Dropout in eq. 5, 7 and 10.
        use_intent_query (`bool`, *optional*, defaults to `True`):
            Stage B (eq. 11-13). Off for the "Vanilla" and "w/o IQ" ablations of the paper's Table 3.
        use_clap_gate (`bool`, *optional*, defaults to `True`):
            Stage C (eq. 14-15). Off for "Vanilla" and "w/o CLAP"; the CLAP tower is then not built at all.
        audio_token_id (`int`, *optional*, defaults to 151669):
            Id of the `<audio>` placeholder token (the first id after Qwen3's tokenizer vocabulary).
        whisper_trim_padding (`bool`, *optional*, defaults to `False`):
            Run the Whisper encoder on each window's real frames only (its positional embeddings sliced to that
            length, as Ultravox does) instead of on a zero-padded 30 s window: a 10 s clip then costs about a third.
            Whisper was pretrained on padded windows, so this changes the features; a model must be trained and
            run with the same setting (the training feature cache keys on it). Off reproduces the paper.
    """

    model_type = "tinygiant"
    sub_configs = {
        "whisper_config": WhisperConfig,
        "htsat_config": ClapAudioConfig,
        "clap_config": ClapAudioConfig,
        "text_config": Qwen3Config,
    }

    def __init__(
        self,
        whisper_config=None,
        htsat_config=None,
        clap_config=None,
        text_config=None,
        num_audio_tokens=300,
        projector_layers=2,
        projector_heads=16,
        cgmlp_dim=3072,
        conv_kernel_size=17,
        ffn_dim=4096,
        projector_dropout=0.1,
        use_intent_query=True,
        use_clap_gate=True,
        audio_token_id=151669,
        whisper_trim_padding=False,
        **kwargs,
    ):
        self.whisper_config = _as_config(whisper_config, WhisperConfig, whisper_large_v3_turbo_config)
        self.htsat_config = _as_config(htsat_config, ClapAudioConfig, htsat_tiny_config)
        self.clap_config = _as_config(clap_config, ClapAudioConfig, htsat_base_config)
        self.text_config = _as_config(text_config, Qwen3Config, qwen3_0_6b_config)
        self.num_audio_tokens = num_audio_tokens
        self.projector_layers = projector_layers
        self.projector_heads = projector_heads
        self.cgmlp_dim = cgmlp_dim
        self.conv_kernel_size = conv_kernel_size
        self.ffn_dim = ffn_dim
        self.projector_dropout = projector_dropout
        self.use_intent_query = use_intent_query
        self.use_clap_gate = use_clap_gate
        self.audio_token_id = audio_token_id
        self.whisper_trim_padding = whisper_trim_padding
        # Earlier configs stored the audio layout; it is the encoders' (AUDIO_LAYOUT), so it is read, not loaded.
        for field in ("whisper_window_seconds", "whisper_frames_per_window", "htsat_window_seconds",
                      "htsat_frames_per_window"):
            kwargs.pop(field, None)
        # transformers ties lm_head to the input embeddings by reading the top-level config (Qwen3-0.6B ties them).
        kwargs["tie_word_embeddings"] = self.text_config.tie_word_embeddings
        # Users call `AutoModel.from_pretrained(...).generate(...)`, so AutoModel loads the generating class too;
        # `AutoModelForMultimodalLM` is the class transformers' `any-to-any` pipeline loads.
        kwargs.setdefault("auto_map", {
            "AutoConfig": "configuration_tinygiant.TinyGiantConfig",
            "AutoModel": "modeling_tinygiant.TinyGiantForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_tinygiant.TinyGiantForConditionalGeneration",
            "AutoModelForMultimodalLM": "modeling_tinygiant.TinyGiantForConditionalGeneration",
        })
        super().__init__(**kwargs)

    # The audio layout is the encoders', not a setting: one source, `AUDIO_LAYOUT`, which the processor reads too.
    @property
    def whisper_frames_per_window(self) -> int:
        return AUDIO_LAYOUT.whisper_frames_per_window

    @property
    def htsat_frames_per_window(self) -> int:
        return AUDIO_LAYOUT.htsat_frames_per_window


TinyGiantConfig.register_for_auto_class()


def _as_config(value, config_class, default):
    if value is None:
        return default()
    if isinstance(value, dict):
        return config_class(**{k: v for k, v in value.items() if k != "model_type"})
    return value
