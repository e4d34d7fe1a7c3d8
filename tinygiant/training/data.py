"""Training data: CoTA-format rows (`user`, `assistant`, `audio`) from the Hub or local files, and the collator that
turns them into TinyGiant batches.

    train = load_cota(configs="complex_audio", streaming=True)      # zhifeixie/Audio-Reasoner-CoTA, chosen configs
    train = load_cota(files=["data/train.jsonl"])                   # local JSONL / Parquet in the same format
    collator = TinyGiantCollator(processor, system_prompt=SYSTEM_PROMPT, fallback_rows=train)

Audio stays undecoded in the dataset (`{"bytes", "path"}`, or CoTA's bare 16 kHz float lists) and is decoded by the
collator with soundfile + soxr (`datasets`' own decoding needs torchcodec). The conversation comes from
`parsing_tinygiant.cota_to_messages`, the batch layout from `TinyGiantProcessor.pad`: the same format the pipeline
asks in.
"""

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, Dataset, IterableDataset, Value, concatenate_datasets, load_dataset

from modeling_tinygiant import AUDIO_INPUTS
from parsing_tinygiant import cota_to_messages
from processing_tinygiant import TOKEN_PADDING, load_audio

logger = logging.getLogger("tinygiant.training.data")

COTA_REPO = "zhifeixie/Audio-Reasoner-CoTA"
COTA_COLUMNS = ["user", "assistant", "audio"]
COTA_ARRAY_RATE = 16000  # some CoTA configs store audio as a bare list of 16 kHz samples


# ----------------------------------------------------------------------------- datasets


def load_cota(files: list[str] | None = None, name: str = COTA_REPO, configs: str | None = None, split: str = "train",
              streaming: bool = False, shuffle_buffer: int = 1000, seed: int = 42) -> Dataset | IterableDataset:
    """CoTA rows: from local `files` (.jsonl/.json/.parquet) if given, else the Hub dataset `name`.

    `configs` is a comma-separated list of config names, each optionally `name:split` (e.g.
    `complex_audio,S2TT:e2z`), checked against the configs the Hub lists at run time; an unknown name fails with
    the list. A streamed dataset is shuffled with a `shuffle_buffer`.
    """
    if files:
        return _local_dataset(files)
    from datasets import get_dataset_config_names, get_dataset_split_names

    available = get_dataset_config_names(name)
    if not configs:
        raise ValueError(f"choose --dataset_config among {available} (comma-separated, `name` or `name:split`)")
    parts = []
    for spec in configs.split(","):
        config, _, config_split = spec.strip().partition(":")
        if config not in available:
            raise ValueError(f"{name} has no config {config!r}; available configs: {available}")
        config_split = config_split or split
        splits = get_dataset_split_names(name, config)
        if config_split not in splits:
            raise ValueError(f"config {config!r} has no split {config_split!r}; its splits: {splits} "
                             f"(write `{config}:<split>`)")
        logger.info("loading %s / %s / %s (streaming=%s)", name, config, config_split, streaming)
        parts.append(_select(load_dataset(name, config, split=config_split, streaming=streaming)))
    ds = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if streaming else ds


def _local_dataset(files):
    """CoTA rows from local JSONL/Parquet files; relative audio paths are resolved against each file's folder."""
    parts = []
    for file in files:
        builder = "parquet" if str(file).endswith(".parquet") else "json"
        ds = load_dataset(builder, data_files=str(file), split="train")
        if "audio" in ds.column_names and getattr(ds.features["audio"], "dtype", None) == "string":
            base = Path(file).resolve().parent
            ds = ds.map(lambda row, base=base: {"audio": str(base / row["audio"]) if row["audio"] else None})
        parts.append(_select(ds))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _select(ds):
    """Keep the three CoTA columns; audio as undecoded `{"bytes", "path"}` (the collator decodes it, without
    torchcodec)."""
    missing = set(COTA_COLUMNS) - set(ds.column_names)
    if missing:
        raise ValueError(f"the dataset has no {sorted(missing)} column(s); CoTA rows need `user`, `assistant`, `audio`")
    ds = ds.select_columns(COTA_COLUMNS)
    for column in ("user", "assistant"):  # Parquet may say large_string; one type lets files be concatenated
        if ds.features and ds.features[column] != Value("string"):
            ds = ds.cast_column(column, Value("string"))
    audio = ds.features["audio"] if ds.features else None
    # A bare float list (some CoTA configs, 16 kHz) stays as it is; paths, bytes and Audio are cast.
    if audio is not None and (isinstance(audio, (Audio, dict)) or getattr(audio, "dtype", None) == "string"):
        ds = ds.cast_column("audio", Audio(decode=False))
    return ds


# ----------------------------------------------------------------------------- collator


class BadRow(ValueError):
    """A row that cannot be trained on (no audio, undecodable audio, empty answer, nothing left after truncation)."""


class TinyGiantCollator:
    """Turns CoTA rows (`user`, `assistant`, `audio`) into TinyGiant training batches.

    Each row is rendered with the processor's chat template; `labels` are the assistant's tokens (end-of-turn
    included), -100 elsewhere; padding is on the right. Rows longer than `max_text_length` text tokens are cut at
    the end, never inside an audio span (audio placeholders do not count towards the limit).

    Bad rows are skipped and counted (`num_skipped`, also sent along in the batch as `num_skipped_rows` so that the
    trainer can log it even from dataloader workers). If every row of a batch is bad, the last good row this collator
    saw is repeated instead (it is a real, correctly labelled row, so the loss stays well defined and all DDP/ZeRO
    ranks still run the audio path); before any good row has been seen, it searches `fallback_rows` (the training
    set) for one, and only if none of the first `fallback_search` rows is usable does it raise a clear error.

    With a `feature_cache` (an `AudioFeatureCache`), batches carry the encoders' outputs (`whisper_frames`,
    `htsat_frames`, `clap_vector`) instead of the mels, so the model skips its encoders. Clips not in the cache yet are
    encoded here, from the mels the processor made, and stored (clips already cached get no mels at all); the batch
    counts both (`num_feature_cache_hits`, `num_feature_cache_misses`). Encoding here needs the encoders usable
    outside the training step: not sharded (FSDP, ZeRO-3) and, on GPUs, no dataloader worker processes; otherwise
    fill the cache first with `AudioFeatureCache.encode`.
    """

    def __init__(self, processor, max_text_length=2048, zero_audio=False, system_prompt=None, fallback_rows=None,
                 fallback_search=1000, feature_cache=None):
        self.processor = processor
        self.max_text_length = max_text_length
        self.zero_audio = zero_audio
        self.system_prompt = system_prompt
        self.fallback_rows = fallback_rows
        self.fallback_search = fallback_search
        self.num_skipped = 0
        self.last_good = None
        self.feature_cache = feature_cache

    def __call__(self, rows):
        encoded, skipped = [], 0
        for row in rows:
            try:
                encoded.append(self.encode_row(row))
            except BadRow as error:
                skipped += 1
                logger.warning("skipping a bad row (%s); %d skipped so far", error, self.num_skipped + skipped)
        self.num_skipped += skipped
        if encoded:
            self.last_good = encoded[0]
        else:
            encoded = [self.replacement()]
        batch = self.pad(encoded)
        batch["num_skipped_rows"] = torch.tensor(skipped)
        return batch

    def encode_row(self, row: Mapping) -> dict:
        """One row through the processor, truncated to the text limit; with a feature cache, its clip's key too."""
        text, (waveform, rate) = self.prepare(row)
        audio = {"array": waveform, "sampling_rate": rate}
        key = None if self.feature_cache is None else self.feature_cache.key(audio)
        cached = None if key is None else self.feature_cache.get(key)  # then no mels: the encoders will not run
        encoded = self.truncate(self.processor(text=text, audio=audio, output_labels=True,
                                               extract_audio_features=cached is None))
        if key is not None:
            encoded["audio_key"] = key
        if cached is not None:
            encoded["audio_features"] = cached
        return encoded

    def prepare(self, row: Mapping) -> tuple[str, tuple[np.ndarray, int]]:
        """`(rendered text, (waveform, rate))` for one row, or raise `BadRow` naming the field at fault."""
        if not isinstance(row, Mapping):
            raise BadRow(f"row is a {type(row).__name__}, not a mapping of columns")
        if row.get("audio") is None:
            raise BadRow("row has no audio")
        for field in ("user", "assistant"):
            if not isinstance(row.get(field), str):
                raise BadRow(f"row's {field!r} is {type(row.get(field)).__name__}, not text")
        messages = cota_to_messages(row.get("user"), row.get("assistant"), self.system_prompt)
        if not messages[-1]["content"] and not messages[-1]["reasoning_content"]:
            raise BadRow("row has an empty assistant turn")
        text = self.processor.apply_chat_template(messages, tokenize=False)
        # The limit may only cut the answer: a prompt that alone reaches it leaves nothing to learn.
        prompt = text[: text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]
        prompt_tokens = len(self.processor.tokenizer(prompt.replace(self.processor.audio_token, ""))["input_ids"])
        if prompt_tokens >= self.max_text_length:
            raise BadRow(f"the prompt has {prompt_tokens} text tokens, over the limit of {self.max_text_length}")
        try:
            audio = row["audio"]
            if isinstance(audio, (list, np.ndarray)):  # a bare float sequence: CoTA's 16 kHz arrays
                waveform, rate = load_audio(np.asarray(audio, dtype=np.float32), COTA_ARRAY_RATE)
            else:
                waveform, rate = load_audio(audio)
        except (FileNotFoundError, ValueError, TypeError, RuntimeError) as error:
            raise BadRow(f"audio cannot be decoded: {error}") from error
        if self.zero_audio:
            waveform = np.zeros_like(waveform)
        return text, (waveform, rate)

    def truncate(self, encoded: dict) -> dict:
        """Keep at most `max_text_length` text tokens (audio placeholders do not count), never cutting an audio span."""
        ids = encoded["input_ids"][0]
        is_audio = ids == self.processor.audio_token_id
        text_positions = torch.nonzero(~is_audio).flatten()
        if len(text_positions) > self.max_text_length:
            cut = int(text_positions[self.max_text_length])  # the first text token over the limit
            if is_audio.any():
                cut = max(cut, int(torch.nonzero(is_audio).flatten()[-1]) + 1)
            for key in TOKEN_PADDING:
                encoded[key] = encoded[key][:, :cut]
        return encoded

    def pad(self, encoded: list[dict]) -> dict:
        """Right-padded batch (`TinyGiantProcessor.pad`); with a feature cache, the encoders' outputs replace the
        mels."""
        if self.feature_cache is None:
            return dict(self.processor.pad(encoded, padding_side="right"))
        text = [{k: v for k, v in e.items() if k not in (*AUDIO_INPUTS, "audio_key", "audio_features")}
                for e in encoded]
        batch = dict(self.processor.pad(text, padding_side="right"))
        features, misses = self.cached_features(encoded, [e["audio_key"] for e in encoded])
        batch.update(features, num_feature_cache_hits=torch.tensor(len(encoded) - misses),
                     num_feature_cache_misses=torch.tensor(misses))
        return batch

    def cached_features(self, encoded: list[dict], keys: list[str]) -> tuple[dict[str, torch.Tensor], int]:
        """`(features, misses)`: the rows' encoder features (read from the feature cache by `encode_row`), and how many
        clips were not in it (those are encoded now, from the mels the processor made for them, and stored)."""
        features = {key: e["audio_features"] for key, e in zip(keys, encoded) if "audio_features" in e}
        missing = {key: e for key, e in zip(keys, encoded) if key not in features}
        if missing:
            mels = {name: torch.cat([e[name] for e in missing.values()]) for name in AUDIO_INPUTS}
            features.update(self.feature_cache.encode_features(list(missing), **mels))
        return {name: torch.stack([features[key][name] for key in keys]) for name in features[keys[0]]}, len(missing)

    def replacement(self) -> dict:
        """A batch of one good row, for a batch in which every row was bad."""
        if self.last_good is None:
            for row in itertools.islice(iter(self.fallback_rows or []), self.fallback_search):
                try:
                    self.last_good = self.encode_row(row)
                    break
                except BadRow:
                    continue
        if self.last_good is None:
            raise RuntimeError(
                f"every row of a batch was bad and none of the first {self.fallback_search} training rows is usable "
                "(no audio, undecodable audio or an empty answer): check the dataset's `audio`, `user` and "
                "`assistant` columns"
            )
        logger.warning("every row of this batch was bad; training on a replacement row instead")
        return self.last_good
