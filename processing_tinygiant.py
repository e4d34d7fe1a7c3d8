"""TinyGiant processor: audio at two sampling rates for three encoders, and a Qwen3 chat prompt.

One call turns text with `<audio>` markers plus the matching audios into everything the model takes:
- `whisper_input_features`: 128-bin log-mels of 30 s windows at 16 kHz (Whisper-large-v3-turbo);
- `clap_input_features`: 64-bin log-mels of 10 s windows at 48 kHz, read by both HTS-AT towers;
- `whisper_lengths` / `htsat_lengths`: how many encoder frames of each audio are real audio, not padding;
- `input_ids` in which each `<audio>` is expanded to `num_audio_tokens` placeholder ids;
- `instruction_mask`: the user's instruction tokens, whose mean embedding is the intent query (eq. 11);
- `labels` on request: the input ids on assistant tokens (end-of-turn included), -100 everywhere else.

Windows are cut deterministically (no random crops): Whisper sees consecutive 30 s windows and the HTS-AT
towers consecutive 10 s windows; a short last window is zero-padded for Whisper (as Whisper was trained) and
repeat-padded for HTS-AT (as LAION CLAP was trained), and only the frames that cover real audio are kept.
"""

import io
import json
import math
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

try:
    from .configuration_tinygiant import AUDIO_LAYOUT
    from .parsing_tinygiant import SYSTEM_PROMPT
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from configuration_tinygiant import AUDIO_LAYOUT  # this repository, imported as top-level modules
    from parsing_tinygiant import SYSTEM_PROMPT

try:  # optional: the torch-free ONNX runtime (onnx_tinygiant.py) reads audio and prompts through this file
    import torch
except ImportError:
    torch = None

# What a raw audio array may be.
ARRAY_TYPES = (np.ndarray, list) if torch is None else (np.ndarray, torch.Tensor, list)

# Tensors with one row per prompt, padded to a common length in a batch, and the value they are padded with (None:
# the tokenizer's pad id). Every other tensor has one row per audio window or per audio and is concatenated.
TOKEN_PADDING = {"input_ids": None, "attention_mask": 0, "instruction_mask": 0, "labels": -100}

# Qwen3's chat markup: `<|im_start|>role\n ... <|im_end|>`.
TURN_PATTERN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(<\|im_end\|>|$)", re.DOTALL)

# Qwen3 style. A conversation without a system message gets the checkpoint's default system turn, which
# `build_chat_template(default_system_prompt)` writes into the template itself (as Qwen's templates carry theirs): every
# runtime that renders the checkpoint's template (transformers, vLLM, transformers.js) asks as the model was trained.
# A caller can still override it per call with the template variable `default_system_prompt` (`""`: no system turn).
# Audio content items render as `<audio>`; an assistant turn's `reasoning_content` goes inside
# `<think>...</think>` before its answer, in every turn (reasoning is what TinyGiant is trained to produce);
# `{% generation %}` marks what the assistant says, end-of-turn included, for `return_assistant_tokens_mask`.
CHAT_TEMPLATE_BODY = """\
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}{%- for item in content -%}
{%- if item.type == 'audio' -%}<audio>{%- elif item.type == 'text' -%}{{ item.text }}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- if system_turn and (not messages or messages[0].role != 'system') -%}
{{- '<|im_start|>system\\n' + system_turn + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}
{%- generation -%}
{%- if message.reasoning_content is defined and message.reasoning_content is not none -%}
{{- '<think>\\n' + message.reasoning_content.strip() + '\\n</think>\\n\\n' + render(message.content).lstrip() -}}
{%- else -%}
{{- render(message.content) -}}
{%- endif -%}
{{- '<|im_end|>' -}}
{%- endgeneration -%}
{{- '\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}
{%- endif -%}
"""


def build_chat_template(default_system_prompt: str = SYSTEM_PROMPT) -> str:
    """TinyGiant's chat template whose conversations without a system message get `default_system_prompt` as their
    system turn (`""`: none). Training writes the prompt it trained with (`train_sft.py --system_prompt`) into the
    checkpoint this way; a new checkpoint defaults to Audio-Reasoner's, the paper's SFT prompt."""
    if not isinstance(default_system_prompt, str):
        raise ValueError(f"the default system prompt must be a string ('' for none), got {default_system_prompt!r}")
    # A JSON string is a valid Jinja string literal (same escapes), so any prompt text is embedded verbatim.
    default = json.dumps(default_system_prompt)
    return (f"{{%- set system_turn = default_system_prompt if default_system_prompt is defined else {default} -%}}\n"
            + CHAT_TEMPLATE_BODY)


# What an audio dict may hold: a decoded `datasets.Audio` value ({"array", "sampling_rate", "path"}) or an undecoded
# one ({"bytes", "path"}).
AUDIO_DICT_KEYS = {"array", "sampling_rate", "path", "bytes"}


def load_audio(audio: Any, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Return `(mono float32 waveform, sampling_rate)` for one audio input: the one audio reader of the project.

    Accepts a file path, an http(s) or file URL, the bytes of a file, a `{"array", "sampling_rate"}` dict, a
    `{"bytes"|"path"}` dict (as `datasets.Audio(decode=False)` gives), a torchcodec `AudioDecoder` (as `datasets` 4+
    decodes audio columns), or a numpy/torch array together with `sampling_rate`. Files carry their own rate; an array
    never gets a guessed one (a 16 kHz clip read as 48 kHz would be three times shorter), so an array without
    `sampling_rate` is a `ValueError`. Multichannel audio is averaged to mono (for a 2-D array the shorter axis is
    taken as channels); integer PCM is scaled to [-1, 1]. Arrays must hold real numbers, integer or floating
    (complex, boolean, object or string arrays are refused), and `sampling_rate` must be a positive whole number.
    """
    if isinstance(audio, dict):
        unknown = sorted(set(audio) - AUDIO_DICT_KEYS, key=str)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in an audio dict; it takes {sorted(AUDIO_DICT_KEYS)}")
        if "array" in audio:
            audio, sampling_rate = audio["array"], audio.get("sampling_rate", sampling_rate)
        elif audio.get("bytes") is not None:
            audio = audio["bytes"]
        elif audio.get("path") is not None:
            audio = audio["path"]
        else:
            raise ValueError("an audio dict needs 'array' and 'sampling_rate', or 'bytes' or 'path'; "
                             f"got keys {list(audio)}")
    if hasattr(audio, "get_all_samples"):
        samples = audio.get_all_samples()
        audio, sampling_rate = samples.data, samples.sample_rate
    if isinstance(audio, str) and re.match(r"(https?|file)://", audio):
        audio = _fetch_url(audio)
    if isinstance(audio, (bytes, bytearray)):
        audio = io.BytesIO(bytes(audio))
    if isinstance(audio, (str, Path, io.BytesIO)):
        name = "audio bytes" if isinstance(audio, io.BytesIO) else f"audio file {audio}"
        if not isinstance(audio, io.BytesIO) and not Path(audio).is_file():
            raise FileNotFoundError(f"{name} does not exist" if not Path(audio).exists() else f"{name} is not a file")
        try:
            waveform, sampling_rate = soundfile.read(audio, dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile names the format problem; keep its words
            raise ValueError(f"cannot decode {name}: {error}") from error
        return _check(waveform.mean(axis=1), sampling_rate)
    if not isinstance(audio, ARRAY_TYPES):
        # A list given to the pipeline is a batch: a list of samples arrives here one number at a time.
        hint = " (a list is a batch of inputs: pass a clip's samples as an array)" if isinstance(
            audio, (int, float, np.number)) else ""
        raise TypeError(
            f"unsupported audio input of type {type(audio).__name__}{hint}: pass a file path or URL, the file's "
            "bytes, a numpy array or torch tensor with its `sampling_rate`, or a {'array', 'sampling_rate'} dict"
        )
    if sampling_rate is None:
        raise ValueError("a raw audio array needs its `sampling_rate` (pass {'array': ..., 'sampling_rate': ...}); "
                         "arrays are never given a guessed rate")
    if hasattr(audio, "detach"):  # a torch tensor; numpy has no bfloat16
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.dtype == torch.bfloat16 else audio).numpy()
    waveform = np.asarray(audio)
    if not (np.issubdtype(waveform.dtype, np.integer) or np.issubdtype(waveform.dtype, np.floating)):
        raise ValueError(f"audio samples must be real numbers (integer or floating point), got an array of "
                         f"{waveform.dtype}")
    if np.issubdtype(waveform.dtype, np.integer):
        info = np.iinfo(waveform.dtype)
        waveform = (waveform.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    waveform = waveform.astype(np.float32)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=int(np.argmin(waveform.shape)))
    elif waveform.ndim != 1:
        raise ValueError(f"audio must be 1-D (samples) or 2-D (samples x channels), got shape {waveform.shape}")
    return _check(waveform, sampling_rate)


def _fetch_url(url, timeout=30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise ValueError(f"cannot fetch audio from {url}: {error}") from error


def chat_audio(item: dict) -> Any:
    """The audio of one `{"type": "audio", ...}` content item, in a form `load_audio` reads.

    The item names its audio with `path` (a file or URL), `url`, or `audio` (anything `load_audio` takes). An array
    under `audio` needs its rate, either as `{"array", "sampling_rate"}` or as a `"sampling_rate"` key of the item.
    """
    if item.get("audio") is not None:
        audio = item["audio"]
        if isinstance(audio, ARRAY_TYPES):
            if item.get("sampling_rate") is None:
                raise ValueError(
                    "an audio item with an array needs its rate: {'type': 'audio', 'audio': array, 'sampling_rate': "
                    "16000} or {'type': 'audio', 'audio': {'array': array, 'sampling_rate': 16000}}"
                )
            return {"array": audio, "sampling_rate": item["sampling_rate"]}
        return audio
    for key in ("path", "url"):
        if item.get(key) is not None:
            return item[key]
    raise ValueError(f"an audio item needs 'path', 'url' or 'audio'; got keys {sorted(item)}")


def _check(waveform, sampling_rate):
    if (isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating))
            or not sampling_rate > 0 or not float(sampling_rate).is_integer()):
        raise ValueError(f"invalid sampling_rate {sampling_rate!r}: it must be a positive whole number of Hz")
    if waveform.shape[0] < 2:
        raise ValueError(f"audio has {waveform.shape[0]} samples; it needs at least 2")
    if not np.isfinite(waveform).all():
        raise ValueError("audio contains NaN or Inf samples")
    return np.ascontiguousarray(waveform), int(sampling_rate)


def resample(waveform: np.ndarray, sampling_rate: int, target_rate: int) -> np.ndarray:
    if sampling_rate == target_rate:
        return waveform
    return soxr.resample(waveform, sampling_rate, target_rate).astype(np.float32)


def pad_widths(missing: int, padding_side: str) -> tuple[int, int]:
    """`torch.nn.functional.pad`'s (left, right) widths that bring a row `missing` tokens short to the full width."""
    return (missing, 0) if padding_side == "left" else (0, missing)


def split_windows(waveform: np.ndarray, window_samples: int) -> list[np.ndarray]:
    return [waveform[i : i + window_samples] for i in range(0, len(waveform), window_samples)]


def spans_to_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Mark the tokens whose character offsets start inside any of `spans` (pairs of character positions)."""
    offsets = np.asarray(offsets).reshape(-1, 2)  # an empty text's offsets come back as an empty 1-D array
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        mask |= (starts >= start) & (starts < end) & (ends > starts)
    return mask


class TinyGiantProcessor(ProcessorMixin):
    r"""
    Processor for TinyGiant: a CLAP feature extractor (48 kHz, the primary one, so that `apply_chat_template` loads
    audio files at 48 kHz), a Whisper feature extractor (16 kHz, 128 mel bins) and a Qwen3 tokenizer.

    Args:
        feature_extractor ([`ClapFeatureExtractor`]): log-mels for the HTS-AT and CLAP towers.
        whisper_feature_extractor ([`WhisperFeatureExtractor`]): log-mels for the Whisper encoder.
        tokenizer: the Qwen3 tokenizer with the `<audio>` token added.
        chat_template (`str`, *optional*): defaults to `build_chat_template()`: TinyGiant's Qwen3-style template with
            Audio-Reasoner's system prompt as the default system turn (a trained checkpoint carries its own).
        audio_token (`str`, *optional*, defaults to `"<audio>"`): the placeholder written once per audio.
        num_audio_tokens (`int`, *optional*, defaults to 300): how many placeholder ids one audio becomes (N).
        max_audio_seconds (`float`, *optional*, defaults to 600): longer audio is rejected with a `ValueError`.
    """

    def __init__(
        self,
        feature_extractor,
        whisper_feature_extractor,
        tokenizer,
        chat_template=None,
        audio_token="<audio>",
        num_audio_tokens=300,
        max_audio_seconds=600.0,
    ):
        self.audio_token = audio_token
        self.num_audio_tokens = num_audio_tokens
        self.max_audio_seconds = max_audio_seconds
        super().__init__(
            feature_extractor, whisper_feature_extractor, tokenizer,
            chat_template=chat_template or build_chat_template(),
        )

    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token)

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        output_labels: bool = False,
        extract_audio_features: bool = True,
        padding=True,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        images=None,
        videos=None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` (a string or a list) and extract features of `audio` (one item or a list).

        Each `<audio>` in the text takes the next audio, in order; their counts must match. `sampling_rate` is the
        rate of raw arrays (files and dicts carry their own). `output_labels=True` adds `labels` for training (as
        transformers' audio processors name it).
        `extract_audio_features=False` skips the mels (the audios then only have to match the markers): for callers
        that feed the frozen encoders' cached outputs (`whisper_frames`, ...) instead, such as a training feature cache.
        """
        if text is None:
            raise ValueError("TinyGiantProcessor needs `text`, with one `<audio>` marker per audio")
        if images is not None or videos is not None:
            raise ValueError("TinyGiant takes audio and text only")
        texts = [text] if isinstance(text, str) else list(text)
        audios = [] if audio is None else audio if isinstance(audio, (list, tuple)) else [audio]
        n_markers = sum(t.count(self.audio_token) for t in texts)
        if n_markers != len(audios):
            raise ValueError(
                f"the text has {n_markers} `{self.audio_token}` markers but {len(audios)} audios were given: "
                "write one marker per audio"
            )

        data = self.extract_audio_features(audios, sampling_rate) if audios and extract_audio_features else {}
        expanded = [t.replace(self.audio_token, self.audio_token * self.num_audio_tokens) for t in texts]
        encoding = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_offsets_mapping=True,
            return_tensors="np",
            **kwargs,
        )
        offsets = encoding.pop("offset_mapping")
        data.update(encoding)
        data["instruction_mask"] = self._turn_mask(expanded, offsets, data, "user", fallback_to_all=True)
        if output_labels:
            labels = np.where(self._turn_mask(expanded, offsets, data, "assistant"), data["input_ids"], -100)
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def extract_audio_features(self, audios: list, sampling_rate: int | None = None) -> dict[str, np.ndarray]:
        """The encoders' inputs for a list of audios (any input `load_audio` takes; `sampling_rate` for raw arrays).

        Returns numpy arrays: `whisper_input_features` (windows, 128, 3000), `clap_input_features` (windows, 1, 1001,
        64), and per audio `whisper_lengths` / `htsat_lengths`, the encoder frames that cover real audio.
        """
        layout = AUDIO_LAYOUT
        whisper_windows, htsat_windows, whisper_lengths, htsat_lengths = [], [], [], []
        for item in audios:
            waveform, rate = load_audio(item, sampling_rate)
            seconds = len(waveform) / rate
            if seconds > self.max_audio_seconds:
                raise ValueError(f"audio is {seconds:.1f} s long; the maximum is {self.max_audio_seconds} s")
            # Resample the source once to each encoder's rate.
            audio_16k = resample(waveform, rate, layout.whisper_sampling_rate)
            audio_48k = resample(waveform, rate, layout.clap_sampling_rate)
            whisper_windows += split_windows(audio_16k, layout.whisper_window_seconds * layout.whisper_sampling_rate)
            htsat_windows += split_windows(audio_48k, layout.htsat_window_seconds * layout.clap_sampling_rate)
            whisper_frames = seconds * layout.whisper_frames_per_window / layout.whisper_window_seconds
            whisper_lengths.append(math.ceil(whisper_frames))
            htsat_lengths.append(math.ceil(seconds * layout.htsat_frames_per_window / layout.htsat_window_seconds))
        whisper = self.whisper_feature_extractor(
            whisper_windows, sampling_rate=layout.whisper_sampling_rate, padding="max_length", return_tensors="np"
        )
        clap = self.feature_extractor(
            htsat_windows, sampling_rate=layout.clap_sampling_rate, truncation="rand_trunc", padding="repeatpad",
            return_tensors="np",
        )
        return {
            "whisper_input_features": whisper["input_features"],
            "clap_input_features": clap["input_features"],
            "whisper_lengths": np.array(whisper_lengths),
            "htsat_lengths": np.array(htsat_lengths),
        }

    def apply_chat_template(
        self, conversation: list[dict] | list[list[dict]], chat_template: str | None = None, tokenize: bool = False,
        return_dict: bool = False, return_tensors: str | None = "pt", output_labels: bool = False,
        padding_side: str = "left", processor_kwargs: dict | None = None, **kwargs,
    ) -> Any:  # text, a BatchFeature, or the input ids
        """Render one conversation or a list of them; with `tokenize=True`, also load their audio and run the processor.

        Audio goes inside the messages, as for Audio Flamingo 3 or Voxtral: `{"type": "audio", "path": "clip.wav"}`
        (a file or URL), `{"type": "audio", "url": ...}`, or `{"type": "audio", "audio": ...}` with anything
        `load_audio` reads. An array needs its rate, `{"audio": {"array": a, "sampling_rate": 16000}}` or
        `{"audio": a, "sampling_rate": 16000}`: a bare array is a `ValueError`, never silently read at some default
        rate. Each audio is decoded once at its own rate and resampled once per encoder, as `processor(audio=...)` does.

        Several audios and turns: each `<audio>` lands where its item stands, in order. The intent query (eq. 11)
        averages every user turn's text. A list of conversations is one batch, padded on `padding_side` ("left" for
        generation). `output_labels=True` adds `labels`: the assistant turns' tokens, -100 elsewhere, so a
        training collator is `processor.apply_chat_template(batch, tokenize=True, return_dict=True,
        output_labels=True, padding_side="right")`. Other keyword arguments (`add_generation_prompt`,
        `enable_thinking`, ...) go to the template; `processor_kwargs` to `__call__`.
        """
        if not tokenize:
            return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        audios, rendered = [], []
        for messages in conversations:
            rendered.append([])
            for message in messages:
                content = message.get("content")
                if isinstance(content, (list, tuple)):
                    audios += [chat_audio(item) for item in content if item.get("type") == "audio"]
                    # The template needs only the item's type; arrays need not go through Jinja.
                    content = [{"type": "audio"} if item.get("type") == "audio" else item for item in content]
                rendered[-1].append({**message, "content": content})
        prompts = super().apply_chat_template(rendered, chat_template=chat_template, tokenize=False, **kwargs)
        inputs = self(text=prompts, audio=audios, output_labels=output_labels, padding_side=padding_side,
                      return_tensors=return_tensors, **(processor_kwargs or {}))
        return inputs if return_dict else inputs["input_ids"]

    def pad(self, items: list, padding_side: str = "left") -> BatchFeature:
        """One batch from items the processor made one at a time (each a batch of one prompt).

        Token tensors (`input_ids`, `attention_mask`, `instruction_mask`, `labels`) are padded to the longest, on the
        left for generation (every row continues from its last real token) or on the right for training; the audio
        tensors hold one row per window or per audio, so they are concatenated in order.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        width = max(item["input_ids"].shape[1] for item in items)
        batch = {}
        for key in items[0]:
            tensors = [torch.as_tensor(item[key]) for item in items]
            if key in TOKEN_PADDING:
                value = self.tokenizer.pad_token_id if TOKEN_PADDING[key] is None else TOKEN_PADDING[key]
                tensors = [torch.nn.functional.pad(t, pad_widths(width - t.shape[1], padding_side), value=value)
                           for t in tensors]
            batch[key] = torch.cat(tensors)
        return BatchFeature(data=batch)

    def _turn_mask(self, texts, offsets, data, role, fallback_to_all=False):
        """Mask of the tokens inside `role`'s turns (the content and, for the assistant, its `<|im_end|>`).

        Audio placeholders and padding are never in it. With `fallback_to_all`, a text with no chat markup at all
        (a raw prompt) counts as one user turn.
        """
        mask = np.zeros(data["input_ids"].shape, dtype=bool)
        for row, text in enumerate(texts):
            turns = list(TURN_PATTERN.finditer(text))
            if turns:
                end_group = 3 if role == "assistant" else 2
                spans = [(m.start(2), m.end(end_group)) for m in turns if m.group(1) == role]
            else:
                spans = [(0, len(text))] if fallback_to_all else []
            mask[row] = spans_to_mask(offsets[row], spans)
        mask &= data["attention_mask"].astype(bool) & (data["input_ids"] != self.audio_token_id)
        return mask.astype(np.int64)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids", "attention_mask", "instruction_mask", "whisper_input_features", "clap_input_features",
            "whisper_lengths", "htsat_lengths",
        ]


TinyGiantProcessor.register_for_auto_class("AutoProcessor")
