"""GRPO's data: multiple-choice questions about one clip each, as rows TRL's `GRPOTrainer` takes.

    train = load_multiple_choice(files=["rows.jsonl"])                  # {"audio", "question", "choices", "answer"}
    train = load_multiple_choice(files=["MMAR-meta.json"], audio_dir="MMAR")  # MMAR's or MMAU's metadata format
    train = load_multiple_choice(name="you/avqa-style", split="train")        # the Hub, through `datasets`

Every row becomes `{"prompt", "audio", "question", "choices", "answer"}`: `prompt` is the user turn as the pipeline
asks it (`parsing_tinygiant.question_messages`: the audio item, the question, the lettered choices); the system turn
comes from the chat template, so training and inference ask alike. `audio` stays undecoded (a path or
`{"bytes", "path"}`), decoded by the trainer once per distinct clip.

Audio columns, by format: `audio` (this project's rows; a path relative to the file, bytes, or a `datasets.Audio`),
`audio_path` (MMAR: `./audio/x.wav`, relative to `--audio_dir`, default the file's folder), `audio_id` (MMAU test-mini:
`./test-mini-audios/x.wav`, likewise). Rows whose audio is missing or undecodable, whose question or choices the prompt
cannot take (2 to 6 distinct non-empty strings), or whose answer is not among the choices, are skipped and counted
(`SkippedRows`), as in SFT.
"""

import logging
from collections import Counter
from pathlib import Path

from datasets import Audio, Dataset, IterableDataset, concatenate_datasets, load_dataset

from parsing_tinygiant import check_choices, format_question, question_messages
from processing_tinygiant import load_audio

logger = logging.getLogger(__name__)

AUDIO_COLUMNS = ("audio", "audio_path", "audio_id")  # this project's rows, MMAR's meta, MMAU's meta
COLUMNS = ("prompt", "audio", "question", "choices", "answer")


class SkippedRows(Counter):
    """Rows left out, counted by reason (`sum(counts.values())` in all)."""

    def total(self) -> int:
        return sum(self.values())


def load_multiple_choice(files: list[str] | None = None, name: str | None = None, config: str | None = None,
                         split: str = "train", audio_dir: str | None = None, streaming: bool = False,
                         skipped: SkippedRows | None = None) -> Dataset | IterableDataset:
    """Multiple-choice rows from local `files` (.jsonl/.json/.parquet) or the Hub dataset `name`; bad rows are left
    out and counted in `skipped` (as they are read, for a streamed dataset)."""
    skipped = SkippedRows() if skipped is None else skipped
    if files:
        parts = [_local(file, audio_dir, skipped) for file in files]
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if not name:
        raise ValueError("pass --dataset_files (local rows) or --dataset_name (a Hub dataset)")
    ds = load_dataset(name, config, split=split, streaming=streaming)
    return _normalise(ds, Path(audio_dir) if audio_dir else None, skipped)


def _local(file: str, audio_dir: str | None, skipped: SkippedRows) -> Dataset:
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {file} does not exist")
    builder = "parquet" if path.suffix == ".parquet" else "json"
    ds = load_dataset(builder, data_files=str(path), split="train")
    base = Path(audio_dir) if audio_dir else path.resolve().parent
    return _normalise(ds, base, skipped)


def _normalise(ds: Dataset | IterableDataset, base: Path | None, skipped: SkippedRows) -> Dataset | IterableDataset:
    columns = ds.column_names or list(ds.features or [])
    audio_column = next((c for c in AUDIO_COLUMNS if c in columns), None)
    missing = [c for c in ("question", "choices", "answer") if c not in columns]
    if audio_column is None or missing:
        raise ValueError(f"multiple-choice rows need an audio column (one of {list(AUDIO_COLUMNS)}) and `question`, "
                         f"`choices`, `answer`; this dataset has {columns}")
    feature = (ds.features or {}).get(audio_column)
    if isinstance(feature, Audio):
        ds = ds.cast_column(audio_column, Audio(decode=False))

    def to_row(row: dict) -> dict:
        return {"prompt": _prompt(row), "audio": _audio(row[audio_column], base)}

    kept = ds.filter(lambda row: _usable(row, audio_column, base, skipped),
                     **({} if isinstance(ds, IterableDataset) else {"load_from_cache_file": False}))
    kept = kept.map(to_row, remove_columns=[c for c in columns if c not in ("question", "choices", "answer")])
    if skipped.total() and not isinstance(ds, IterableDataset):
        logger.warning("skipped %d of %d rows: %s", skipped.total(), len(ds), dict(skipped))
    return kept.select_columns(list(COLUMNS))


def _prompt(row: dict) -> list[dict]:
    """The user turn: the audio item, then the question with its lettered choices."""
    return question_messages(row["question"], check_choices(row["choices"]))


def _audio(value, base: Path | None):
    """A relative path resolved against `base`; anything else (bytes, `{"bytes", "path"}`) as it is."""
    if isinstance(value, str):
        path = Path(value)
        return str(path if path.is_absolute() or base is None else (base / path).resolve())
    return value


def _usable(row: dict, audio_column: str, base: Path | None, skipped: SkippedRows) -> bool:
    """Whether a row can be trained on; a row that cannot is counted under its reason."""
    try:
        format_question(row["question"], check_choices(row["choices"]))  # an open question has no choices
    except ValueError:
        skipped["bad question or choices"] += 1
        return False
    if not isinstance(row["answer"], str) or row["answer"].strip() not in check_choices(row["choices"]):
        skipped["answer not among the choices"] += 1
        return False
    audio = row[audio_column]
    if audio is None or (isinstance(audio, dict) and audio.get("bytes") is None and not audio.get("path")):
        skipped["no audio"] += 1
        return False
    try:
        load_audio(_audio(audio, base))
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, OSError):
        skipped["missing or undecodable audio"] += 1
        return False
    return True
