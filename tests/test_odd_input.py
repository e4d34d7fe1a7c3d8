"""Odd input across the input surface: every input is either handled or refused with a message naming the problem.
(tests/test_pipeline.py covers missing, corrupt and untyped audio, missing questions and bad choice counts.)"""

import json
import re

import numpy as np
import pytest
import soundfile
import torch
from helpers import tone

from parsing_tinygiant import format_question
from pipeline_tinygiant import TinyGiantAudioReasoningPipeline
from processing_tinygiant import load_audio
from tinygiant import cli
from tinygiant.eval import mmar
from tinygiant.training.data import BadRow, TinyGiantCollator


@pytest.mark.parametrize(
    "question, choices, message",
    [
        ("q", "dog", "choices must be a list or tuple of 2 to 6 strings, got str 'dog'"),
        ("q", {"dog", "cat"}, "choices must be a list or tuple of 2 to 6 strings, got set"),
        ("q", ["dog", 2], "every choice must be a string, got [2]"),
        ("q", [None, "cat"], "every choice must be a string, got [None]"),
        ("q", ("dog",), "needs 2 to 6 choices, got 1"),
        ("q", ["dog", " "], "a choice is empty"),
        ("q", ["Dog", "dog"], "duplicate choices"),
        (7, None, "the question must be a string, got int"),
        ("", ["dog", "cat"], "the question is empty"),
    ],
    ids=["bare-string", "set", "number", "none", "one", "blank", "duplicate", "question-number", "question-empty"],
)
def test_format_question_refuses(question, choices, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        format_question(question, choices)


def test_format_question_takes_a_tuple():
    assert format_question("Which?", ("dog", "cat")) == "Which?\n(a) dog\n(b) cat"


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (tone(0.1).astype(np.complex64), 16000, "got an array of complex64"),
        (torch.tensor(tone(0.1).astype(np.complex128)), 16000, "got an array of complex128"),
        (np.array(list(tone(0.1)), dtype=object), 16000, "got an array of object"),
        (np.array(["0.1"] * 1600), 16000, "got an array of <U3"),
        (tone(0.1) > 0, 16000, "got an array of bool"),
        (tone(0.1), "16000", "invalid sampling_rate '16000'"),
        (tone(0.1), 16000.5, "invalid sampling_rate 16000.5"),
        (tone(0.1), -8000, "invalid sampling_rate -8000"),
        (tone(0.1), float("nan"), "invalid sampling_rate nan"),
        (tone(0.1), True, "invalid sampling_rate True"),
        ({"array": tone(0.1), "sampling_rate": 16000, "rate": 16000}, None, "unknown key(s) ['rate'] in an audio dict"),
    ],
    ids=["complex", "complex-tensor", "object", "strings", "bool", "rate-string", "rate-fraction", "rate-negative",
         "rate-nan", "rate-bool", "dict-key"],
)
def test_load_audio_refuses(audio, rate, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_audio(audio, rate)


@pytest.mark.parametrize(
    "dtype, full_scale",
    [(np.int16, 32767), (np.int32, 2**31 - 1), (np.uint8, 255), (np.int8, 127)],
)
def test_integer_audio_is_scaled(dtype, full_scale):
    peak = np.zeros(100, dtype=dtype)
    peak[0] = full_scale
    waveform, rate = load_audio(peak, 8000)
    assert waveform.dtype == np.float32 and rate == 8000
    assert 0.99 < waveform[0] <= 1.0 and abs(waveform[1:]).max() <= 1.0


def test_whole_float_rate_and_bfloat16_tensor_are_taken():
    waveform, rate = load_audio(torch.tensor(tone(0.1)).bfloat16(), np.float64(16000.0))
    assert rate == 16000 and isinstance(rate, int) and waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, tone(0.1), atol=1e-2)


def test_processor_refuses_complex_audio(processor):
    with pytest.raises(ValueError, match="audio samples must be real numbers"):
        processor(text="<audio> q", audio=tone(0.5).astype(np.complex64), sampling_rate=16000)


@pytest.fixture(scope="module")
def pipe(model, processor):
    return TinyGiantAudioReasoningPipeline(model=model, processor=processor)


QUICK = {"max_new_tokens": 2, "do_sample": False}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(tone(1.0), sampling_rate=16000, question="q", choices="dog"), "got str 'dog'"),
        (lambda p: p(tone(1.0).astype(np.complex64), sampling_rate=16000, question="q"), "complex64"),
        (lambda p: p({"audio": tone(1.0), "sampling_rate": 16000, "question": "q", "choise": ["a", "b"]}),
         "unknown key(s) ['choise'] in an input dict"),
        (lambda p: p({"array": tone(1.0), "sampling_rate": 16000, "question": "q"}),
         "an input dict with a question needs its audio under 'audio'"),
        (lambda p: p([{"audio": tone(1.0), "sampling_rate": 16000, "question": "q"},
                      {"audio": tone(1.0), "sampling_rate": 16000, "question": "q", "choices": "yes"}],
                     batch_size=2), "got str 'yes'"),
    ],
    ids=["bare-string-choices", "complex-audio", "unknown-key", "audio-not-under-audio", "bad-item-in-batch"],
)
def test_pipeline_refuses(pipe, call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(lambda *a, **k: pipe(*a, **QUICK, **k))


def test_pipeline_empty_batch_is_empty(pipe):
    assert pipe([], question="q") == []
    assert pipe((), question="q", batch_size=4) == []


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, tone(0.5), 16000)
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{dir}/missing.wav", "q"], "audio file {dir}/missing.wav does not exist"),
        (["{dir}", "q"], "{dir} is not a file"),
        (["{wav}", "q", "--model", "{dir}/no-such-model"], "cannot load the model {dir}/no-such-model"),
        (["{wav}", "q", "--choices", "dog", "--model", "{tiny}"], "a multiple-choice question needs 2 to 6 choices"),
        (["{wav}", "  ", "--model", "{tiny}"], "the question is empty"),
        (["{wav}", "q", "--max-new-tokens", "0", "--model", "{tiny}"], "`max_new_tokens` must be greater than 0"),
    ],
    ids=["missing-audio", "folder-as-audio", "missing-model", "one-choice", "empty-question", "zero-tokens"],
)
def test_ask_errors_are_one_readable_line(argv, message, tmp_path, wav, tiny_dir, capsys):
    names = {"dir": tmp_path, "wav": wav, "tiny": tiny_dir}
    assert cli.main(["ask", *[a.format(**names) for a in argv]]) == 1
    err = capsys.readouterr().err
    assert f"error: {message.format(**names)}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "row, message",
    [
        (["user", "assistant"], "row is a list, not a mapping of columns"),
        ({"user": "q <audio>", "assistant": "a"}, "row has no audio"),
        ({"user": None, "assistant": "a", "audio": "x.wav"}, "row's 'user' is NoneType, not text"),
        ({"user": "q <audio>", "assistant": 3, "audio": "x.wav"}, "row's 'assistant' is int, not text"),
        ({"user": "q <audio>", "assistant": "", "audio": "x.wav"}, "row has an empty assistant turn"),
        ({"user": "q <audio>", "assistant": "a", "audio": "{dir}/missing.wav"}, "audio cannot be decoded"),
        ({"user": "q <audio>", "assistant": "a", "audio": {"array": tone(0.5).astype(np.complex64),
                                                           "sampling_rate": 16000}}, "complex64"),
        ({"user": "q <audio>", "assistant": "a", "audio": {"array": tone(0.5), "sampling_rate": "16k"}},
         "invalid sampling_rate '16k'"),
    ],
    ids=["not-a-mapping", "no-audio", "user-none", "assistant-number", "empty-answer", "missing-file", "complex",
         "bad-rate"],
)
def test_collator_bad_rows_name_the_field(processor, row, message, tmp_path):
    if isinstance(row, dict) and isinstance(row.get("audio"), str):
        row = {**row, "audio": row["audio"].format(dir=tmp_path)}
    with pytest.raises(BadRow, match=re.escape(message)):
        TinyGiantCollator(processor).prepare(row)


GOOD_ITEM = {"id": "x1", "audio_path": "./audio/x1.wav", "question": "What is it?", "choices": ["dog", "cat"],
             "answer": "dog", "modality": "sound", "category": "Signal Layer", "sub-category": "Anomaly Detection"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"choices": "dog"}, "item x1: 'question'/'choices': choices must be a list or tuple"),
        ({"choices": ["dog", 3]}, "item x1: 'question'/'choices': every choice must be a string"),
        ({"choices": ["dog", "Dog"]}, "item x1: 'question'/'choices': duplicate choices"),
        ({"question": ""}, "item x1: 'question'/'choices': the question is empty"),
        ({"question": None}, "item x1: 'question'/'choices': the question must be a string"),
        ({"answer": "bird"}, "item x1: answer 'bird' is not one of the choices"),
        ({"answer": 1}, "item x1: ['answer'] must be non-empty strings"),
        ({"id": ["x1"]}, "['id'] must be non-empty strings"),
        ({"audio_path": None}, "item x1: ['audio_path'] must be non-empty strings"),
        ({"modality": ["sound"]}, "item x1: ['modality'] must be non-empty strings"),
        ({"category": "Signal"}, "item x1: unknown layer (category) 'Signal'"),
        ({"sub-category": "Music Theory"}, "item x1: sub-category not in Signal Layer: 'Music Theory'"),
    ],
    ids=["bare-string", "number-choice", "duplicate", "empty-question", "null-question", "answer-not-a-choice",
         "answer-number", "id-list", "path-null", "modality-list", "unknown-layer", "wrong-layer"],
)
def test_mmar_meta_rows_name_the_field(tmp_path, change, message):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps({**GOOD_ITEM, **change}) + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        mmar.load_meta(path)
