"""TinyGiant: three frozen audio encoders, a query-guided projector and Qwen3 (arXiv 2606.08425, section 3).

Equation numbers in comments are the paper's. Layout follows transformers' Audio Flamingo 3: `TinyGiantModel`
(encoders + projector + `Qwen3Model`, returns hidden states with the audio already merged) inside
`TinyGiantForConditionalGeneration` (adds `lm_head`, the loss and generation). The merge lives in
`TinyGiantModel.forward` because TRL's fused LM-head training calls only the inner model.

The audio half (eq. 1-15) is written once, in `TinyGiantAudioMixin`: `TinyGiantModel` runs it before its Qwen3, and
`TinyGiantAudioModel` is it alone, for an engine that brings its own language model (the vLLM plugin).
"""

import hashlib
import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ClapAudioModel, GenerationMixin, PreTrainedModel, Qwen3Model
from transformers.cache_utils import Cache
from transformers.generation import CompileConfig
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

try:
    from .configuration_tinygiant import TinyGiantConfig
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from configuration_tinygiant import TinyGiantConfig  # this repository, imported as top-level modules

# Inputs that exist once per audio window or per audio, consumed at prefill only.
AUDIO_INPUTS = ("whisper_input_features", "clap_input_features", "whisper_lengths", "htsat_lengths")
# The frozen encoders' pooled outputs (`TinyGiantModel.encode_audio`), which can be passed instead of the mels above
# (e.g. from the training feature cache, `tinygiant.training.feature_cache`): one row per audio.
ENCODED_AUDIO_INPUTS = ("whisper_frames", "htsat_frames", "clap_vector")


class EBranchformerBlock(nn.Module):
    """E-Branchformer block (eq. 5-10): self-attention and convolution branches, merged per token, then an FFN.

    The paper's sigma is GELU, E-Branchformer's activation. The merge weights (eq. 8) are two scalars per token.
    """

    def __init__(self, config):
        super().__init__()
        d, p = config.text_config.hidden_size, config.projector_dropout
        self.self_attn = nn.MultiheadAttention(d, config.projector_heads, batch_first=True)
        self.attn_dropout, self.attn_norm = nn.Dropout(p), nn.LayerNorm(d)
        self.conv_in = nn.Linear(d, config.cgmlp_dim)
        k = config.conv_kernel_size
        self.depthwise_conv = nn.Conv1d(config.cgmlp_dim, config.cgmlp_dim, k, padding=k // 2, groups=config.cgmlp_dim)
        self.conv_out = nn.Linear(config.cgmlp_dim, d)
        self.conv_dropout, self.conv_norm = nn.Dropout(p), nn.LayerNorm(d)
        self.merge = nn.Linear(2 * d, 2)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_dim), nn.GELU(), nn.Linear(config.ffn_dim, d))
        self.ffn_dropout, self.ffn_norm = nn.Dropout(p), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn(x, x, x, need_weights=False)[0]
        z_attn = self.attn_norm(x + self.attn_dropout(attn))  # (5)
        h = F.gelu(self.conv_in(x))
        h = F.gelu(self.depthwise_conv(h.transpose(1, 2)).transpose(1, 2))
        x_conv = self.conv_out(h)  # (6)
        z_conv = self.conv_norm(x + self.conv_dropout(x_conv))  # (7)
        w = self.merge(torch.cat([z_attn, z_conv], dim=-1)).softmax(dim=-1)  # (8)
        z = w[..., :1] * z_attn + w[..., 1:] * z_conv  # (9)
        return self.ffn_norm(z + self.ffn_dropout(self.ffn(z)))  # (10)


class QueryGuidedProjector(nn.Module):
    """Maps the pooled audio streams to N LLM embeddings: Stage A (eq. 4-10), B (eq. 12-13) and C (eq. 14-15)."""

    def __init__(self, config):
        super().__init__()
        d = config.text_config.hidden_size
        self.input_proj = nn.Linear(config.whisper_config.d_model + config.htsat_config.hidden_size, d)
        self.blocks = nn.ModuleList([EBranchformerBlock(config) for _ in range(config.projector_layers)])
        if config.use_intent_query:
            self.intent_attn = nn.MultiheadAttention(d, config.projector_heads, batch_first=True)
            self.intent_norm = nn.LayerNorm(d)
        if config.use_clap_gate:
            self.clap_gate = nn.Linear(config.clap_config.hidden_size, d)
            self.gate_norm = nn.LayerNorm(d)

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype it computes in, read off a float tensor it holds: never a linear layer's `weight`, which an
        int8 layer (`int8_tinygiant.Int8Linear`) would have to dequantise."""
        return next(t.dtype for t in itertools.chain(self.parameters(), self.buffers()) if t.is_floating_point())

    def forward(
        self, whisper_frames: torch.Tensor, htsat_frames: torch.Tensor, intent_query: torch.Tensor | None = None,
        clap_vector: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`whisper_frames` (A, N, 1280) and `htsat_frames` (A, N, 768) -> (A, N, d_model).

        `intent_query` (A, d_model) is needed when Stage B is on, `clap_vector` (A, 1024) when Stage C is on.
        """
        h = self.input_proj(torch.cat([whisper_frames, htsat_frames], dim=-1))  # (4)
        for block in self.blocks:
            h = block(h)  # (5)-(10)
        if hasattr(self, "intent_attn"):
            # One query vector per audio: its attention output refines every token as a shared residual.
            attn = self.intent_attn(intent_query[:, None], h, h, need_weights=False)[0]  # (12)
            h = self.intent_norm(h + attn)  # (13)
        if hasattr(self, "clap_gate"):
            g = torch.sigmoid(self.clap_gate(clap_vector))  # (14)
            h = self.gate_norm(h * (0.5 + 0.5 * g[:, None]))  # (15)
        return h


def windows_per_audio(lengths: torch.Tensor, frames_per_window: int) -> torch.Tensor:
    """How many encoder windows each audio of `lengths` real frames spans (the last one may be partly padding)."""
    return (lengths + frames_per_window - 1) // frames_per_window


def real_frames_per_window(lengths: torch.Tensor, frames_per_window: int) -> list[int]:
    """Real (not padding) encoder frames in each window, in window order, of audios with `lengths` real frames."""
    counts = []
    for windows, length in zip(windows_per_audio(lengths, frames_per_window).tolist(), lengths.tolist()):
        counts += [frames_per_window] * (windows - 1) + [length - (windows - 1) * frames_per_window]
    return counts


def whisper_encoder_on_real_frames(encoder: WhisperEncoder, input_features: torch.Tensor) -> torch.Tensor:
    """`WhisperEncoder.forward` (eval) on mels shorter than its 30 s window: the positional embeddings are sliced to
    the frames there are (Ultravox's way) where transformers' forward insists on exactly 3000 mel frames."""
    hidden = F.gelu(encoder.conv2(F.gelu(encoder.conv1(input_features)))).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def pool_per_audio(frames: torch.Tensor, lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Concatenate each audio's windows in time, keep its `length` real frames and pool them to `num_tokens`.

    `frames` is (windows, frames_per_window, dim); consecutive windows belong to consecutive audios.
    """
    windows = windows_per_audio(lengths, frames.shape[1])
    if int(windows.sum()) != frames.shape[0]:
        raise ValueError(
            f"the audio lengths {lengths.tolist()} need {int(windows.sum())} windows but {frames.shape[0]} were given"
        )
    pooled = []
    for audio_windows, length in zip(frames.split(windows.tolist()), lengths.tolist()):
        sequence = audio_windows.flatten(0, 1)[:length]
        pooled.append(F.adaptive_avg_pool1d(sequence.T[None], num_tokens)[0].T)
    return torch.stack(pooled)


def mean_instruction_embedding(inputs_embeds: torch.Tensor, instruction_mask: torch.Tensor) -> torch.Tensor:
    """q_intent (eq. 11): the mean of `inputs_embeds` (batch, seq, d) over the `instruction_mask`ed tokens, per row;
    a row without instruction tokens gets zeros."""
    mask = instruction_mask[..., None].to(inputs_embeds.dtype)
    return (inputs_embeds * mask).sum(1) / mask.sum(1).clamp(min=1)  # (11)


class AudioEncoderCache:
    """A bounded LRU cache of the frozen encoders' pooled outputs, one entry per audio, keyed by its content.

    A follow-up question about the same clip then skips the three encoders (most of the time to first token); the
    projector still runs, since its intent query (eq. 11-13) depends on the question. The key hashes the audio's
    mels and lengths, so equal audio hits whatever object it came in, and any change to the audio misses; it also
    holds `whisper_trim_padding`, which changes the Whisper frames. Changing the encoders' weights (`quantize_int8`
    does) calls `clear`.
    """

    def __init__(self, max_items=32):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.entries = OrderedDict()  # key -> (whisper_frames, htsat_frames, clap_vector or None), each for one audio
        self.hits = self.misses = 0

    def __len__(self):
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    @staticmethod
    def key(whisper_features: torch.Tensor, clap_features: torch.Tensor, whisper_length: int, htsat_length: int,
            whisper_trim_padding: bool = False) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for tensor in (whisper_features, clap_features):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        digest.update(f"{int(whisper_length)},{int(htsat_length)},{bool(whisper_trim_padding)}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> tuple | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: tuple) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_items:
            self.entries.popitem(last=False)


class TinyGiantPreTrainedModel(PreTrainedModel):
    config_class = TinyGiantConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer", "WhisperEncoderLayer", "ClapAudioStage", "EBranchformerBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "TinyGiantPreTrainedModel | tuple":
        # transformers 5 recreates loaded parameters as trainable, so freeze the encoders again.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded  # (model, loading info) on request
        for module in model.modules():
            if isinstance(module, TinyGiantModel):
                module.freeze_audio_encoders()
        return loaded


class TinyGiantAudioMixin:
    """The audio half of TinyGiant (eq. 1-15) on four modules: the frozen `whisper_encoder`, `htsat_encoder` and
    `clap_encoder` (None without the gate) and the trainable `projector`.

    Written once for every runtime: `TinyGiantModel` (transformers) and `TinyGiantAudioModel` (the audio half alone,
    for an engine that brings its own language model, such as the vLLM plugin) both build and run them through here.
    """

    def init_audio_modules(self, config: TinyGiantConfig) -> None:
        self.whisper_encoder = WhisperEncoder(config.whisper_config)
        self.htsat_encoder = ClapAudioModel(config.htsat_config)
        # Without the gate (ablations "Vanilla" and "w/o CLAP") the CLAP tower is not needed at all.
        self.clap_encoder = ClapAudioModel(config.clap_config) if config.use_clap_gate else None
        self.projector = QueryGuidedProjector(config)
        self.audio_cache = None  # an AudioEncoderCache once `enable_audio_cache` is called
        self.freeze_audio_encoders()

    def audio_encoders(self) -> list[nn.Module]:
        return [m for m in (self.whisper_encoder, self.htsat_encoder, self.clap_encoder) if m is not None]

    def freeze_audio_encoders(self) -> None:
        for encoder in self.audio_encoders():
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> "TinyGiantAudioMixin":
        # Trainer calls train() every step; the frozen encoders must keep dropout and layer drop off.
        super().train(mode)
        for encoder in self.audio_encoders():
            encoder.eval()
        return self

    @torch.no_grad()
    def encode_audio(
        self, whisper_input_features: torch.Tensor, clap_input_features: torch.Tensor, whisper_lengths: torch.Tensor,
        htsat_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the frozen encoders: returns F_w and F_h pooled to N steps, and c_clap (None without the gate)."""
        n = self.config.num_audio_tokens
        whisper_frames = self.encode_whisper(whisper_input_features, whisper_lengths)  # (1)
        # HTS-AT's last map is (windows, 768, 2 frequency groups, 32 time steps); average out frequency.
        htsat_map = self.htsat_encoder(clap_input_features).last_hidden_state
        htsat_frames = htsat_map.mean(dim=2).transpose(1, 2)  # (2)
        clap_vector = None
        if self.clap_encoder is not None:
            windows = windows_per_audio(htsat_lengths, htsat_frames.shape[1])
            window_vectors = self.clap_encoder(clap_input_features).pooler_output
            # A long audio's global vector is the mean of its 10 s windows' vectors.
            clap_vector = torch.stack([v.mean(0) for v in window_vectors.split(windows.tolist())])  # (3)
        whisper_pooled = pool_per_audio(whisper_frames, whisper_lengths, n)
        return whisper_pooled, pool_per_audio(htsat_frames, htsat_lengths, n), clap_vector

    def encode_whisper(self, whisper_input_features: torch.Tensor, whisper_lengths: torch.Tensor) -> torch.Tensor:
        """The Whisper encoder's frames per window, (windows, 1500, 1280).

        With `config.whisper_trim_padding` each window runs on its real frames only (a 10 s clip's window on 500
        frames instead of 1500) and the padding frames of the output stay zero; pooling reads only real frames.
        """
        if not self.config.whisper_trim_padding:
            return self.whisper_encoder(whisper_input_features).last_hidden_state
        frames_per_window = self.config.whisper_frames_per_window
        mels_per_frame = whisper_input_features.shape[-1] // frames_per_window  # 2: the second conv's stride
        real_frames = real_frames_per_window(whisper_lengths, frames_per_window)
        width = self.whisper_encoder.config.d_model
        frames = whisper_input_features.new_zeros(len(real_frames), frames_per_window, width)
        for length in sorted(set(real_frames)):  # windows of one length run as one batch
            windows = [i for i, count in enumerate(real_frames) if count == length]
            mels = whisper_input_features[windows, :, : length * mels_per_frame]
            frames[windows, :length] = whisper_encoder_on_real_frames(self.whisper_encoder, mels)
        return frames

    def enable_audio_cache(self, max_items: int = 32) -> "AudioEncoderCache":
        """Keep the frozen encoders' outputs of the last `max_items` audios (`AudioEncoderCache`); returns the cache."""
        self.audio_cache = AudioEncoderCache(max_items)
        return self.audio_cache

    def disable_audio_cache(self) -> None:
        self.audio_cache = None

    def encode_audio_cached(
        self, whisper_input_features: torch.Tensor, clap_input_features: torch.Tensor, whisper_lengths: torch.Tensor,
        htsat_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`encode_audio` through `self.audio_cache`: only the audios not seen before run the encoders, in one batch."""
        whisper_windows = windows_per_audio(whisper_lengths, self.config.whisper_frames_per_window).tolist()
        htsat_windows = windows_per_audio(htsat_lengths, self.config.htsat_frames_per_window).tolist()
        whisper_per_audio = whisper_input_features.split(whisper_windows)
        clap_per_audio = clap_input_features.split(htsat_windows)
        keys = [self.audio_cache.key(*audio, self.config.whisper_trim_padding) for audio in
                zip(whisper_per_audio, clap_per_audio, whisper_lengths.tolist(), htsat_lengths.tolist())]
        entries = [self.audio_cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing:
            encoded = self.encode_audio(
                torch.cat([whisper_per_audio[i] for i in missing]), torch.cat([clap_per_audio[i] for i in missing]),
                whisper_lengths[missing], htsat_lengths[missing],
            )
            for row, i in enumerate(missing):
                entries[i] = tuple(None if part is None else part[row] for part in encoded)
                self.audio_cache.put(keys[i], entries[i])
        whisper_frames, htsat_frames, clap_vector = zip(*entries)
        clap_vector = None if clap_vector[0] is None else torch.stack(clap_vector)
        return torch.stack(whisper_frames), torch.stack(htsat_frames), clap_vector

    def get_audio_features(
        self,
        whisper_input_features: torch.Tensor | None = None,
        clap_input_features: torch.Tensor | None = None,
        whisper_lengths: torch.Tensor | None = None,
        htsat_lengths: torch.Tensor | None = None,
        intent_query: torch.Tensor | None = None,
        whisper_frames: torch.Tensor | None = None,
        htsat_frames: torch.Tensor | None = None,
        clap_vector: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """Encoders + projector: `pooler_output` holds the (audios, N, d_model) embeddings that replace placeholders.

        Pass either the mels (and lengths) or the encoders' precomputed pooled outputs `whisper_frames` (audios, N,
        1280), `htsat_frames` (audios, N, 768) and `clap_vector` (audios, 1024; only with the gate), as returned by
        `encode_audio`: the frozen encoders are then skipped.
        """
        dtype = self.projector.dtype
        if whisper_frames is None:
            encode = self.encode_audio if self.audio_cache is None else self.encode_audio_cached
            whisper_frames, htsat_frames, clap_vector = encode(
                whisper_input_features.to(self.whisper_encoder.dtype),
                clap_input_features.to(self.htsat_encoder.dtype),
                whisper_lengths,
                htsat_lengths,
            )
        elif htsat_frames is None or (self.clap_encoder is not None and clap_vector is None):
            raise ValueError("precomputed audio features need `whisper_frames`, `htsat_frames` and (with the CLAP "
                             "gate) `clap_vector`")
        if clap_vector is not None:
            clap_vector = clap_vector.to(dtype)
        audio_embeds = self.projector(whisper_frames.to(dtype), htsat_frames.to(dtype), intent_query, clap_vector)
        return BaseModelOutputWithPooling(pooler_output=audio_embeds)


class TinyGiantAudioModel(TinyGiantAudioMixin, nn.Module):
    """The audio half alone: the three frozen encoders and the projector, without a language model.

    `get_audio_features(..., intent_query=...)` gives the N embeddings per audio that replace its placeholders. Its
    parameters are named as in a TinyGiant checkpoint without the `model.` prefix (`whisper_encoder.*`, ...).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.init_audio_modules(config)


class TinyGiantModel(TinyGiantAudioMixin, TinyGiantPreTrainedModel):
    """Frozen Whisper encoder, HTS-AT and CLAP towers, the query-guided projector and the Qwen3 decoder (no head)."""

    def __init__(self, config):
        super().__init__(config)
        self.init_audio_modules(config)
        self.language_model = Qwen3Model(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_placeholder_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, num_audios: int
    ) -> torch.Tensor:
        """(batch, seq) mask of the audio placeholder positions; raises unless each audio has exactly N of them."""
        if input_ids is not None:
            mask = input_ids == self.config.audio_token_id
        else:
            audio_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.audio_token_id, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == audio_embedding).all(-1)
        n = self.config.num_audio_tokens
        per_row = mask.sum(1)
        if int(per_row.sum()) != num_audios * n or bool((per_row % n).any()):
            raise ValueError(
                f"the prompt has {per_row.tolist()} audio placeholder tokens per sample but {num_audios} audios need "
                f"{n} each; every `<audio>` must expand to {n} tokens (TinyGiantProcessor does this) and never be "
                "truncated"
            )
        return mask

    def get_intent_query(
        self, inputs_embeds: torch.Tensor, instruction_mask: torch.Tensor, placeholder_mask: torch.Tensor,
        prepended: bool = False,
    ) -> torch.Tensor:
        """q_intent per audio: the mean input embedding over its sample's instruction tokens (eq. 11).

        `instruction_mask` covers the processor's tokens. When the sequence is longer, the extra positions were added
        either after the prompt (generation without a KV cache re-feeds prompt + generated ids) or, with `prepended`,
        before it (PEFT's prompt tuning and p-tuning put their virtual tokens' embeddings first); the mask is aligned
        accordingly, so the intent still averages exactly the instruction's tokens.
        """
        if instruction_mask is None:
            raise ValueError("the intent query needs `instruction_mask` (TinyGiantProcessor returns it)")
        mask = instruction_mask.to(inputs_embeds.device)
        extra = inputs_embeds.shape[1] - mask.shape[1]
        if extra < 0:
            raise ValueError(f"instruction_mask covers {mask.shape[1]} positions but the input has only "
                             f"{inputs_embeds.shape[1]}: pass the mask the processor made for these tokens")
        mask = F.pad(mask, (extra, 0) if prepended else (0, extra))
        per_sample = mean_instruction_embedding(inputs_embeds, mask.bool() & ~placeholder_mask)
        audios_per_sample = placeholder_mask.sum(1) // self.config.num_audio_tokens
        return per_sample.repeat_interleave(audios_per_sample, dim=0)

    def embed_inputs(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        whisper_input_features: torch.Tensor | None = None,
        clap_input_features: torch.Tensor | None = None,
        whisper_lengths: torch.Tensor | None = None,
        htsat_lengths: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        whisper_frames: torch.Tensor | None = None,
        htsat_frames: torch.Tensor | None = None,
        clap_vector: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LLM's input embeddings: the tokens' embeddings with each audio's N projector outputs scattered into its
        placeholders (eq. 15's input). `forward` runs on them; other LLM runtimes can too (`llamacpp_tinygiant`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if whisper_input_features is not None or whisper_frames is not None:
            num_audios = len(whisper_frames) if whisper_frames is not None else len(whisper_lengths)
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, num_audios=num_audios)
            intent_query = None
            if self.config.use_intent_query:
                # Only embeddings given: anything beyond the processor's tokens was prepended (PEFT prompt learning).
                intent_query = self.get_intent_query(inputs_embeds, instruction_mask, placeholder_mask,
                                                     prepended=input_ids is None)
            audio_embeds = self.get_audio_features(
                whisper_input_features, clap_input_features, whisper_lengths, htsat_lengths, intent_query,
                whisper_frames=whisper_frames, htsat_frames=htsat_frames, clap_vector=clap_vector,
            ).pooler_output
            inputs_embeds = inputs_embeds.masked_scatter(
                placeholder_mask[..., None].expand_as(inputs_embeds), audio_embeds.to(inputs_embeds.dtype)
            )
        return inputs_embeds

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as Qwen3's: PEFT's prefix tuning passes it
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        whisper_input_features: torch.FloatTensor | None = None,
        clap_input_features: torch.FloatTensor | None = None,
        whisper_lengths: torch.LongTensor | None = None,
        htsat_lengths: torch.LongTensor | None = None,
        instruction_mask: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        whisper_frames: torch.FloatTensor | None = None,
        htsat_frames: torch.FloatTensor | None = None,
        clap_vector: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        whisper_input_features (`torch.FloatTensor` of shape `(windows, 128, 3000)`): 30 s log-mel windows at 16 kHz.
        clap_input_features (`torch.FloatTensor` of shape `(windows, 1, 1001, 64)`): 10 s log-mel windows at 48 kHz.
        whisper_lengths, htsat_lengths (`torch.LongTensor` of shape `(audios,)`): real encoder frames per audio.
        instruction_mask (`torch.LongTensor` of shape `(batch, seq)`): the user's instruction tokens (Stage B).
        whisper_frames, htsat_frames, clap_vector (*optional*): the frozen encoders' precomputed pooled outputs per
            audio (see `get_audio_features`), instead of the mels: the encoders are skipped.
        """
        inputs_embeds = self.embed_inputs(
            input_ids, inputs_embeds, whisper_input_features, clap_input_features, whisper_lengths, htsat_lengths,
            instruction_mask, whisper_frames, htsat_frames, clap_vector,
        )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return BaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class TinyGiantForConditionalGeneration(TinyGiantPreTrainedModel, GenerationMixin):
    """TinyGiant with its language-modelling head: what `AutoModel` and `AutoModelForCausalLM` load."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As Qwen3ForCausalLM's: the head is sharded like the tied embedding it shares its weight with.
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyGiantModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_audio_features(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(*args, **kwargs)

    def enable_audio_cache(self, max_items: int = 32) -> AudioEncoderCache:
        """Encode each audio once: keep the frozen encoders' outputs of the last `max_items` audios in memory.

        `generate` and `forward` then run the encoders only on audio they have not seen; the projector and the LLM
        always run, so outputs are the same as without the cache. Off by default (training rarely repeats a clip);
        the pipeline turns it on. Returns the `AudioEncoderCache` (its `hits`/`misses` count look-ups).
        """
        return self.model.enable_audio_cache(max_items)

    def disable_audio_cache(self) -> None:
        self.model.disable_audio_cache()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        whisper_input_features: torch.FloatTensor | None = None,
        clap_input_features: torch.FloatTensor | None = None,
        whisper_lengths: torch.LongTensor | None = None,
        htsat_lengths: torch.LongTensor | None = None,
        instruction_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        whisper_frames: torch.FloatTensor | None = None,
        htsat_frames: torch.FloatTensor | None = None,
        clap_vector: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): unshifted targets, -100 where not trained.
        See [`TinyGiantModel.forward`] for the audio inputs.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            whisper_input_features=whisper_input_features,
            clap_input_features=clap_input_features,
            whisper_lengths=whisper_lengths,
            htsat_lengths=htsat_lengths,
            instruction_mask=instruction_mask,
            use_cache=use_cache,
            whisper_frames=whisper_frames,
            htsat_frames=htsat_frames,
            clap_vector=clap_vector,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # **kwargs carries num_items_in_batch, which makes gradient accumulation token-exact.
            vocab_size = self.config.text_config.vocab_size
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        # The audio is merged once, at prefill; later steps read it from the KV cache.
        audio_inputs = {k: kwargs.pop(k, None) for k in (*AUDIO_INPUTS, *ENCODED_AUDIO_INPUTS, "instruction_mask")}
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if kwargs.get("is_first_iteration") or not kwargs.get("use_cache", True):
            model_inputs.update(audio_inputs)
        return model_inputs

    def generate_with_static_cache(self, *args, compile: bool = False, **kwargs) -> torch.LongTensor:
        """`generate` with a pre-allocated static KV cache and, with `compile=True`, a `torch.compile`d decoding step.

        Gives the same tokens as `generate`. The static cache avoids growing the cache each step; compiling fuses the
        decoding step (its first call compiles, which takes a while, then each new batch size or length recompiles).
        transformers compiles automatically only on CUDA, so `compile=True` also opts CPUs in. Other `generate`
        arguments pass through.
        """
        kwargs.setdefault("cache_implementation", "static")
        if compile:
            config = kwargs.pop("compile_config", None) or CompileConfig(fullgraph=False, dynamic=False, mode="default")
            config._compile_all_devices = True
            kwargs["compile_config"] = config
        else:
            kwargs.setdefault("disable_compile", True)
        return self.generate(*args, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Repeat each sample's audios with the sample (beam search, `num_return_sequences`).

        The generic expansion repeats every tensor along dim 0, which is wrong for per-window and per-audio tensors.
        """
        encoded = {k: model_kwargs.pop(k) for k in ENCODED_AUDIO_INPUTS if model_kwargs.get(k) is not None}
        if expand_size == 1 or (model_kwargs.get("whisper_input_features") is None and not encoded):
            input_ids, model_kwargs = super()._expand_inputs_for_generation(
                expand_size, is_encoder_decoder, input_ids, **model_kwargs
            )
            return input_ids, {**model_kwargs, **encoded}
        audios_per_sample = (input_ids == self.config.audio_token_id).sum(1) // self.config.num_audio_tokens
        first_audio = torch.cumsum(audios_per_sample, 0) - audios_per_sample
        order = torch.cat(
            [torch.arange(f, f + n).repeat(expand_size)
             for f, n in zip(first_audio.tolist(), audios_per_sample.tolist())]
        )
        audio = {k: v[order] for k, v in encoded.items()}  # precomputed features are per audio
        if model_kwargs.get("whisper_input_features") is None:
            input_ids, model_kwargs = super()._expand_inputs_for_generation(
                expand_size, is_encoder_decoder, input_ids, **model_kwargs
            )
            return input_ids, {**model_kwargs, **audio}
        audio.update({k: model_kwargs.pop(k) for k in AUDIO_INPUTS})
        for features, lengths, frames_per_window in (
            ("whisper_input_features", "whisper_lengths", self.config.whisper_frames_per_window),
            ("clap_input_features", "htsat_lengths", self.config.htsat_frames_per_window),
        ):
            per_audio = audio[features].split(windows_per_audio(audio[lengths], frames_per_window).tolist())
            audio[features] = torch.cat([per_audio[i] for i in order.tolist()])
            audio[lengths] = audio[lengths][order]
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **audio}


TinyGiantForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
