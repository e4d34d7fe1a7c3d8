"""Files the tools write so that a crash never leaves half of one.

A file is written beside its place first, as `.NAME.partial-PID`, then moved into place in one step (`os.replace`):
a reader, or the next run after a kill, finds the old file or the new one. The remote code at the repository root
cannot import this package and keeps its own (`llamacpp_tinygiant.export_gguf`).
"""

import glob
import json
import os
from contextlib import contextmanager
from pathlib import Path


def partial_path(path):
    """Where a write of `path` goes before it is moved into place: `.NAME.partial-PID` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def leftover_partials(path):
    """The partial writes of `path` that killed processes (any of them) left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.partial-*"))


@contextmanager
def replacing(path):
    """Yield the path to write `path`'s new content to; when the block ends, that file replaces `path` in one step.
    If the block raises, `path` is left as it was and the partial file is removed."""
    path = Path(path)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path, text, encoding="utf-8"):
    with replacing(path) as partial:
        partial.write_text(text, encoding=encoding)


def write_json_atomic(path, data, indent=2):
    """`data` as JSON (`indent`; None for one line) and a newline."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")

