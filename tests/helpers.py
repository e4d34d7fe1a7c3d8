"""What the tests import (`from helpers import tone`): a test tone, a one-turn conversation, a model that talks, a
script preamble that hides the project, a tiny checkpoint with fewer audio tokens. Fixtures are in conftest.py, which
pytest loads by itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from parsing_tinygiant import conversation
from tinygiant.hub.publish import SHIPPED_CODE

# The project is pip-installed in development mode, so a fresh interpreter could import it from anywhere. Put first
# in a script, this wraps every import finder so that it finds none of the project's modules (nor any other blocked
# ones), as on a user's machine; `importlib.util.find_spec`, with which transformers probes optional packages, then
# says None for them too.
PROJECT_MODULES = [name.removesuffix(".py") for name in SHIPPED_CODE] + ["tinygiant", "train_sft"]
BLOCK_IMPORTS = """
import sys
BLOCKED = {blocked!r}
class Without:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(name + " should not be importable")
"""


def without(*modules: str) -> str:
    """A script preamble after which neither the project nor `modules` can be imported."""
    return BLOCK_IMPORTS.format(blocked=[*PROJECT_MODULES, *modules])


def talkative(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw the language model's matrices with a large std: at the usual init a tiny random Qwen3 prints only
    newlines whatever it hears, which would make "batched == one by one" hold trivially."""
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "language_model" in name and parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


def tone(seconds: float, sampling_rate: int = 16000, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chat(question: str, answer: str | None = None, reasoning: str | None = None, system: str | None = None) -> list:
    """A one-turn conversation with one audio (no system turn unless given), as the project writes it."""
    return conversation(question, answer=answer, reasoning=reasoning, system_prompt=system)


def with_audio_tokens(tiny_dir: Path, out: Path, num_audio_tokens: int) -> Path:
    """A copy of the tiny checkpoint `tiny_dir` in `out` whose audios fill `num_audio_tokens` placeholders instead of
    300 (faster training steps)."""
    shutil.copytree(tiny_dir, out, dirs_exist_ok=True)
    for name in ("config.json", "processor_config.json"):
        config = json.loads((out / name).read_text())
        config["num_audio_tokens"] = num_audio_tokens
        (out / name).write_text(json.dumps(config))
    return out

