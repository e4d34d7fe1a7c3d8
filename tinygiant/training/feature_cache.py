"""A disk cache of the frozen encoders' outputs, so that training runs Whisper, HTS-AT and CLAP once per clip.

The three encoders are frozen and run in eval mode without grad, so their pooled outputs for a clip never change:
F_w pooled to (N, 1280), F_h pooled to (N, 768) and c_clap (1024,) (`TinyGiantModel.encode_audio`). They are stored
one safetensors file per clip under `cache_dir/<encoder fingerprint>/`, keyed by a hash of the decoded audio, and
fed back through the model's `whisper_frames` / `htsat_frames` / `clap_vector` inputs, which skip the encoders.
The projector and the LLM still run (and train) on every step.

    cache = AudioFeatureCache("feature_cache", model, processor)
    cache.encode(dataset["audio"])                       # once: fills the cache (hits are skipped)
    batch.update(cache.fetch([cache.key(a) for a in audios]))   # in the collator: no encoder, no model needed
    model(**batch)                                 # input_ids, attention_mask, instruction_mask, labels + features

`train_sft.py --feature_cache_dir DIR` fills and reads such a cache as it trains
(`tinygiant.training.data.TinyGiantCollator`).
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeling_tinygiant import ENCODED_AUDIO_INPUTS as FEATURE_NAMES
from processing_tinygiant import TinyGiantProcessor, load_audio
from tinygiant.files import replacing

CACHE_FORMAT = 2  # bump when the stored layout changes (2: a checksum in each file's metadata)

logger = logging.getLogger(__name__)


def features_checksum(features: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a clip's feature tensors."""
    digest = hashlib.sha256()
    for name in sorted(features):
        tensor = features[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def audio_key(audio: str | bytes | dict | np.ndarray, sampling_rate: int | None = None) -> str:
    """Hash of the decoded mono waveform and its rate: the same clip from a file, bytes or an array gets one key."""
    waveform, rate = load_audio(audio, sampling_rate)
    digest = hashlib.sha256(str(rate).encode())
    digest.update(waveform.tobytes())
    return digest.hexdigest()


def encoder_fingerprint(model: torch.nn.Module, processor: TinyGiantProcessor | None = None) -> str:
    """Identity of everything the cached features depend on: the encoders' configs and weights, N, whether Whisper
    runs on real frames only (`whisper_trim_padding`) and the feature extractors' settings. Hashing the weights
    (about 1.5 GB at full size) takes a second or two."""
    inner = getattr(model, "model", model)
    digest = hashlib.sha256(f"tinygiant-features-v{CACHE_FORMAT}-N{inner.config.num_audio_tokens}".encode())
    if inner.config.whisper_trim_padding:  # only when on, so that existing caches keep their fingerprint
        digest.update(b"whisper-trim-padding")
    for encoder in inner.audio_encoders():
        digest.update(encoder.config.to_json_string(use_diff=False).encode())
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode() + str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    if processor is not None:
        for extractor in (processor.feature_extractor, processor.whisper_feature_extractor):
            settings = {k: v for k, v in extractor.to_dict().items() if k not in ("mel_filters", "mel_filters_slaney")}
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class AudioFeatureCache:
    """Per-clip encoder features on disk; `hits` and `misses` count `get`/`fetch`/`encode` look-ups.

    Args:
        cache_dir: root folder; each encoder fingerprint gets its own subfolder, so caches of different encoders
            (or feature-extractor settings) never mix.
        model: a `TinyGiantForConditionalGeneration` or `TinyGiantModel`; needed to compute features, and for the
            fingerprint unless `fingerprint` is given.
        processor: the `TinyGiantProcessor` that turns audio into mels (needed to compute features).
        fingerprint: a precomputed `encoder_fingerprint` (lets dataloader workers open the cache without a model).
    """

    def __init__(self, cache_dir, model=None, processor=None, fingerprint=None):
        if fingerprint is None and model is None:
            raise ValueError("pass the model (to fingerprint its encoders) or a precomputed `fingerprint`")
        self.model = getattr(model, "model", model)
        self.processor = processor
        self.fingerprint = fingerprint or encoder_fingerprint(model, processor)
        self.dir = Path(cache_dir) / self.fingerprint[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    key = staticmethod(audio_key)

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def __contains__(self, key):
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The cached features of one clip as a dict of tensors, or None (a miss; a corrupt file counts as one)."""
        features = self.load(key)
        if features is None:
            self.misses += 1
        else:
            self.hits += 1
        return features

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The clip's features if its file is there and intact, else None. A file that is cut short or altered (a
        killed write, a full disk) fails its checksum or the safetensors load: it is deleted with a warning, so the
        features are recomputed rather than read as wrong numbers."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as stored:
                expected = (stored.metadata() or {}).get("sha256")
                features = {name: stored.get_tensor(name) for name in stored.keys()}
            if expected != features_checksum(features):
                raise ValueError("checksum mismatch" if expected else "no checksum")
        except Exception as error:  # safetensors raises its own error types for a damaged header or data
            logger.warning("feature cache file %s is corrupt (%s: %s); recomputing it", path,
                           type(error).__name__, error)
            path.unlink(missing_ok=True)
            return None
        return features

    def fetch(self, keys: list[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Batched features for the model's `whisper_frames` / `htsat_frames` / `clap_vector` inputs, one row per key.

        Raises `KeyError` naming the missing clips: fill the cache first with `encode`.
        """
        rows = [self.get(k) for k in keys]
        missing = [k for k, row in zip(keys, rows) if row is None]
        if missing:
            raise KeyError(f"{len(missing)} clips are not in the feature cache {self.dir}, e.g. {missing[:2]}; "
                           "run AudioFeatureCache.encode on them first")
        return {name: torch.stack([row[name] for row in rows]).to(device) for name in FEATURE_NAMES if name in rows[0]}

    def encode(self, audios: list, sampling_rate: int | None = None, batch_size: int = 8) -> list[str]:
        """Compute and store the features of the `audios` not yet cached (files, dicts or arrays with
        `sampling_rate`); returns their keys. Runs only the frozen encoders, `batch_size` clips at a time."""
        if self.model is None or self.processor is None:
            raise ValueError("computing features needs the model and the processor")
        keys = [self.key(audio, sampling_rate) for audio in audios]
        todo = {}
        for key, audio in zip(keys, audios):
            if key in todo or self.load(key) is not None:
                self.hits += 1
            else:
                self.misses += 1
                todo[key] = audio
        items = list(todo.items())
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            self.encode_features([k for k, _ in chunk],
                                 **self.processor.extract_audio_features([a for _, a in chunk], sampling_rate))
        return keys

    @torch.no_grad()
    def encode_features(self, keys: list[str], whisper_input_features: np.ndarray | torch.Tensor,
                        clap_input_features: np.ndarray | torch.Tensor, whisper_lengths: np.ndarray | torch.Tensor,
                        htsat_lengths: np.ndarray | torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Run the frozen encoders on the processor's audio outputs for `keys` (one audio each, in order), store each
        clip's features and return them as `{key: features}`. For callers that have the mels already, such as
        the training collator."""
        if self.model is None:
            raise ValueError("computing features needs the model")
        inner, device = self.model, self.model.whisper_encoder.device
        outputs = inner.encode_audio(
            torch.as_tensor(whisper_input_features, device=device, dtype=inner.whisper_encoder.dtype),
            torch.as_tensor(clap_input_features, device=device, dtype=inner.htsat_encoder.dtype),
            torch.as_tensor(whisper_lengths, device=device),
            torch.as_tensor(htsat_lengths, device=device),
        )
        features = {}
        for row, key in enumerate(keys):
            features[key] = {name: out[row].contiguous().cpu() for name, out in zip(FEATURE_NAMES, outputs)
                             if out is not None}
            path = self.path(key)
            path.parent.mkdir(exist_ok=True)
            with replacing(path) as partial:  # concurrent writers (DDP ranks) or a crash never leave half a file
                save_file(features[key], partial, metadata={"sha256": features_checksum(features[key])})
        return features
