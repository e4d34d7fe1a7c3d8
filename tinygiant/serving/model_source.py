"""Where the tools' model comes from: their cache folder, and the model `tinygiant ask` and `tinygiant serve` run
without `--model`.

The rule starts in the web app, `default_model()` in `app.py`: `$TINYGIANT_MODEL`, else the `"model"` of `space.json`
beside `app.py`. `app.py` ships in a Space without this package, so it cannot import the tools; the tools load it and
use its rule (tools -> root files, never back), then go on where it names nothing: `runs/demo/model` (what
`tinygiant demo` trains) if it is in the working directory, else a tiny random checkpoint built once in
`$TINYGIANT_CACHE/tiny-random` (default `~/.cache/tinygiant/tiny-random`): untrained, it answers junk, with a warning.
Like `tinygiant serve` and `tinygiant demo`, this needs a clone of the repository (`app.py` beside the package).
"""

import functools
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """`$TINYGIANT_CACHE`, default `~/.cache/tinygiant`."""
    return Path(os.environ.get("TINYGIANT_CACHE") or Path.home() / ".cache" / "tinygiant")


def root_file(name: str) -> Path:
    """The path of `name` at the repository root; `FileNotFoundError` when the tools do not run from a clone."""
    path = ROOT / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not beside the tinygiant package ({ROOT}); run from a clone of the "
                                "repository")
    return path


@functools.cache
def load_app() -> ModuleType:
    """`app.py` as a module, loaded once (it imports torch and transformers; gradio only when it builds the page)."""
    spec = importlib.util.spec_from_file_location("tinygiant_app", root_file("app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_model() -> str:
    """The model to run without `--model` (see the module docstring)."""
    named = load_app().default_model()
    if named:
        return named
    demo = Path("runs", "demo", "model")
    if (demo / "config.json").is_file():
        return str(demo)
    tiny = cache_dir() / "tiny-random"
    logger.warning("no trained model found (set TINYGIANT_MODEL or pass --model); using an UNTRAINED tiny random "
                   "checkpoint in %s. Its answers are junk.", tiny)
    if not (tiny / "config.json").is_file():
        from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(tiny)
    return str(tiny)
