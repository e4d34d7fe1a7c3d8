"""Files the tools write so that a crash never leaves half of one, and the append-only JSON-lines logs they resume from
(`JsonlAppender` writes them, `read_jsonl_log` reads them back); also `RateLimiter`, which paces the calls whose
replies those logs keep.

A file is written beside its place first, as `.NAME.partial-PID`, then moved into place in one step (`os.replace`):
a reader, or the next run after a kill, finds the old file or the new one. The remote code at the repository root
cannot import this package and keeps its own (`llamacpp_tinygiant.export_gguf`).
"""

import glob
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def partial_path(path: str | Path) -> Path:
    """Where a write of `path` goes before it is moved into place: `.NAME.partial-PID` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def leftover_partials(path: str | Path) -> list[Path]:
    """The partial writes of `path` that killed processes (any of them) left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.partial-*"))


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield the path to write `path`'s new content to; when the block ends, that file replaces `path` in one step.
    If the block raises, `path` is left as it was and the partial file is removed."""
    path = Path(path)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with replacing(path) as partial:
        partial.write_text(text, encoding=encoding)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """`data` as JSON (`indent`; None for one line) and a newline."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_jsonl_log(path: str | Path, keys: Sequence[str] = ("id",)) -> list[dict]:
    """The records of an append-only JSON-lines log, in order; [] if there is no file.

    Only the last write can have been cut short by a kill: reading stops at the first line that is not a JSON object
    with all of `keys`, and the file is rewritten without that line and the ones after it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or not all(key in record for key in keys):
            break
        records.append(record)
    kept = lines[: len(records)]
    if len(kept) < len(lines) or (kept and not kept[-1].endswith("\n")):
        write_text_atomic(path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))
    return records


class JsonlAppender:
    """Appends JSON lines to `path`, each flushed and synced before `append` returns, from any thread; a kill loses at
    most the line being written, which `read_jsonl_log` then drops. Use it as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.file = open(self.path, "a", encoding="utf-8")

    def append(self, *records: dict) -> None:
        with self.lock:
            for record in records:
                self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RateLimiter:
    """At most `qps` calls started per second, over all threads (no limit if `qps` is None or 0)."""

    def __init__(self, qps: float | None) -> None:
        self.interval = 1.0 / qps if qps else 0.0
        self.lock = threading.Lock()
        self.next_start = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))
