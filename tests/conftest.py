"""Shared fixtures: one tiny random TinyGiant checkpoint per session, built through `tinygiant.assemble.from_components`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the Hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import conversation
from tinygiant.publish import SHIPPED_CODE
from processing_tinygiant import TinyGiantProcessor
from tinygiant.tiny_checkpoint import write_tiny_checkpoint

torch.set_num_threads(2)

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


def without(*modules):
    """A script preamble after which neither the project nor `modules` can be imported."""
    return BLOCK_IMPORTS.format(blocked=[*PROJECT_MODULES, *modules])


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def processor(tiny_dir):
    return TinyGiantProcessor.from_pretrained(tiny_dir, trust_remote_code=True)


@pytest.fixture(scope="session")
def model(tiny_dir):
    """A shared model in eval mode; tests that train or change it load their own copy."""
    return TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval()


def talkative(model):
    """Re-draw the language model's matrices with a large std: at the usual init a tiny random Qwen3 prints only
    newlines whatever it hears, which would make "batched == one by one" hold trivially."""
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "language_model" in name and parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


def tone(seconds, sampling_rate=16000, freq=440.0, amplitude=0.3):
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chat(question, answer=None, reasoning=None, system=None):
    """A one-turn conversation with one audio (no system turn unless given), as the project writes it."""
    return conversation(question, answer=answer, reasoning=reasoning, system_prompt=system)
