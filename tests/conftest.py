"""Shared fixtures: one tiny random TinyGiant checkpoint per session, built through `from_components`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the Hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from modeling_tinygiant import TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor
from tiny_checkpoint import write_tiny_checkpoint

torch.set_num_threads(2)


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


def tone(seconds, sampling_rate=16000, freq=440.0, amplitude=0.3):
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chat(question, answer=None, reasoning=None, system=None):
    """A one-turn conversation with one audio, in the processor's message format."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer, "reasoning_content": reasoning})
    return messages
