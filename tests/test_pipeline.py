"""The `audio-reasoning` pipeline, as users call it: from a published folder, in a process without this project."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import soundfile
import torch
from helpers import talkative, tone, without
from transformers import TextIteratorStreamer, pipeline

from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import SYSTEM_PROMPT, parse_response
from pipeline_tinygiant import Conversation, TinyGiantAudioReasoningPipeline
from tinygiant.demo.synthetic import generate_clip
from tinygiant.hub.publish import save_checkpoint

GREEDY = {"max_new_tokens": 16, "do_sample": False}


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory, tiny_model, processor):
    return save_checkpoint(tiny_model, processor, tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def pipe(tiny_model, processor):
    return TinyGiantAudioReasoningPipeline(model=tiny_model, processor=processor)


FRESH_PROCESS = """
import sys

import json
import numpy as np
import soundfile
from transformers import AutoModel, AutoProcessor, pipeline

hub = sys.argv[1]
sr = 16000
t = np.arange(sr) / sr
low = (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32")
high = (0.3 * np.sin(2 * np.pi * 880 * t)).astype("float32")
soundfile.write("clip.wav", low, sr)
greedy = {"max_new_tokens": 16, "do_sample": False}

pipe = pipeline("audio-reasoning", model=hub, trust_remote_code=True)
out = {"pipeline_class": type(pipe).__module__ + "." + type(pipe).__name__,
       "model_class": type(pipe.model).__module__ + "." + type(pipe.model).__name__}
out["path"] = pipe("clip.wav", question="What is the sound?", **greedy)
out["array"] = pipe(high, sampling_rate=sr, question="Which tone?", choices=["low", "high"], **greedy)
items = [
    {"audio": "clip.wav", "question": "How many beeps are there?"},
    {"audio": {"array": high[:8000], "sampling_rate": sr}, "question": "Is there speech?", "choices": ["yes", "no"]},
    {"audio": np.concatenate([low, high, low]), "sampling_rate": sr, "question": "What came first?"},
]
out["batched"] = pipe(items, batch_size=3, **greedy)
out["single"] = [pipe(item, **greedy) for item in items]
out["inferred_task"] = pipeline(model=hub, trust_remote_code=True)("clip.wav", question="What is the sound?", **greedy)

# A pipeline loaded from remote code saves a folder that loads again (processor and pipeline code included).
pipe.save_pretrained("resaved")
out["resaved"] = pipeline(model="resaved", trust_remote_code=True)("clip.wav", question="What is the sound?", **greedy)

processor = AutoProcessor.from_pretrained(hub, trust_remote_code=True)
model = AutoModel.from_pretrained(hub, trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is the sound?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(text=prompt, audio="clip.wav")
out["automodel_new_tokens"] = model.generate(**inputs, **greedy).shape[1] - inputs["input_ids"].shape[1]
print("RESULT " + json.dumps(out))
"""


def test_pipeline_from_published_folder_in_a_fresh_process(hub_dir, tmp_path):
    script = tmp_path / "fresh.py"
    script.write_text(without() + textwrap.dedent(FRESH_PROCESS))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(
        [sys.executable, str(script), str(hub_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])

    # The code came from the folder (transformers' dynamic modules), not from this project.
    assert result["pipeline_class"].startswith("transformers_modules.")
    assert result["pipeline_class"].endswith("pipeline_tinygiant.TinyGiantAudioReasoningPipeline")
    assert result["model_class"].endswith("modeling_tinygiant.TinyGiantForConditionalGeneration")

    for output in [result["path"], result["inferred_task"], result["batched"][0], result["batched"][2]]:
        assert set(output) == {"text", "thinking", "answer"}
        assert output["text"]
    for output in [result["array"], result["batched"][1]]:
        assert set(output) == {"text", "thinking", "answer", "choice"}
    # One left-padded generate call over three different clips and prompts gives what three calls give.
    assert result["batched"] == result["single"]
    assert len({o["text"] for o in result["batched"]}) > 1, "outputs should depend on the input"
    assert result["inferred_task"] == result["path"] == result["resaved"]
    assert result["automodel_new_tokens"] == GREEDY["max_new_tokens"]


def test_inputs_of_every_kind_give_the_same_answer(pipe, tmp_path):
    audio = tone(1.5, 16000, 660)
    path = tmp_path / "clip.wav"
    soundfile.write(path, audio, 16000)
    ask = {"question": "What is the sound?", "max_new_tokens": 6, "do_sample": False}
    expected = pipe(str(path), **ask)
    assert pipe(path, **ask) == expected
    assert pipe(path.read_bytes(), **ask) == expected
    assert pipe({"path": str(path)}, **ask) == expected
    assert pipe({"array": audio, "sampling_rate": 16000}, **ask) == expected
    assert pipe(audio, sampling_rate=16000, **ask) == expected
    assert pipe(torch.from_numpy(audio), sampling_rate=16000, **ask) == expected
    assert pipe({"audio": audio, "sampling_rate": 16000, "question": "What is the sound?"},
                max_new_tokens=6, do_sample=False) == expected
    # A generator streams results lazily.
    assert list(pipe((a for a in [audio, audio]), sampling_rate=16000, **ask)) == [expected, expected]


def test_the_checkpoints_system_prompt_and_choices_are_in_the_prompt(pipe):
    def prompt(inputs=None, **kwargs):
        inputs = tone(1.0) if inputs is None else inputs
        item = pipe.preprocess(inputs, sampling_rate=16000, question="Which tone?", choices=["low", "high"], **kwargs)
        return pipe.tokenizer.decode(item["input_ids"][0])

    default = prompt()  # a new checkpoint's chat template carries Audio-Reasoner's prompt
    assert default.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>") and "(a) low\n(b) high" in default
    assert default.endswith("<|im_start|>assistant\n")
    assert prompt(system_prompt=None) == default
    assert prompt(system_prompt="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert prompt(system_prompt="").startswith("<|im_start|>user")  # no system turn at all
    audio = {"array": tone(1.0), "sampling_rate": 16000}
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                 {"type": "text", "text": "Which tone?"}]}]
    item = pipe.preprocess(Conversation(conversation), system_prompt="")
    assert pipe.tokenizer.decode(item["input_ids"][0]).startswith("<|im_start|>user")
    with pytest.raises(ValueError, match="system_prompt"):
        prompt(system_prompt=["not", "a", "string"])


def test_truncated_generation_keeps_text_but_has_no_answer(pipe):
    output = pipe(tone(1.0), sampling_rate=16000, question="Which tone?", choices=["low", "high"],
                  max_new_tokens=3, do_sample=False)
    assert output["text"] and output["answer"] is None and output["choice"] is None
    # What was thought before the cut is kept.
    ids = pipe.tokenizer("<think>\n<PLANNING>\nI will listen", add_special_tokens=False, return_tensors="pt")
    cut = pipe.postprocess({"new_tokens": ids["input_ids"][0], "finished": False, "choices": ["low", "high"]})
    assert cut == {"text": "<think>\n<PLANNING>\nI will listen", "thinking": "<PLANNING>\nI will listen",
                   "answer": None, "choice": None}


def test_finished_generation_is_parsed_and_streams(pipe):
    ask = {"question": "What is the sound?", "sampling_rate": 16000, "do_sample": False}
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    long = pipe(tone(1.0), max_new_tokens=8, streamer=streamer, **ask)
    assert "".join(streamer) == long["text"]  # `streamer` reaches `generate` like any generation kwarg
    # Pretend the 6th generated token ends the turn: the output then stops there and is read as an answer.
    batch = pipe._collate([pipe.preprocess(tone(1.0), **{k: ask[k] for k in ("question", "sampling_rate")})])
    new_tokens = pipe.forward(batch, max_new_tokens=8, do_sample=False)["new_tokens"][0]
    finished = pipe(tone(1.0), max_new_tokens=8, eos_token_id=int(new_tokens[5]), **ask)
    assert finished["text"] and long["text"].startswith(finished["text"])
    assert finished["answer"] is not None and finished["answer"] == parse_response(finished["text"])["answer"]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p, d: p(str(d / "missing.wav"), question="q"), FileNotFoundError, "missing.wav does not exist"),
        (lambda p, d: p(str(d / "corrupt.wav"), question="q"), ValueError, "cannot decode audio file"),
        (lambda p, d: p(str(d / "notes.txt"), question="q"), ValueError, "cannot decode audio file"),
        (lambda p, d: p(42, question="q"), TypeError, "unsupported audio input of type int"),
        (lambda p, d: p(tone(1.0), question="q"), ValueError, "needs its `sampling_rate`"),
        (lambda p, d: p(tone(1.0), sampling_rate=16000), ValueError, "no question"),
        (lambda p, d: p(tone(1.0), sampling_rate=16000, question="  "), ValueError, "the question is empty"),
        (lambda p, d: p(tone(1.0), sampling_rate=16000, question="q", choices=["yes"]), ValueError, "2 to 6 choices"),
        (lambda p, d: p(tone(1.0), sampling_rate=16000, question="q", choices=list("abcdefg")), ValueError,
         "2 to 6 choices"),
        (lambda p, d: p(tone(1.0), sampling_rate=16000, question="q", choices=["Yes", "yes "]), ValueError,
         "duplicate choices"),
        (lambda p, d: p([tone(1.0), tone(1.0)], sampling_rate=16000, question="q", choices=["a", ""], batch_size=2),
         ValueError, "a choice is empty"),
    ],
    ids=["missing-file", "corrupt-file", "not-audio", "wrong-type", "no-rate", "no-question", "empty-question",
         "one-choice", "seven-choices", "duplicate-choices", "empty-choice-in-batch"],
)
def test_bad_inputs_raise_clear_errors(pipe, tmp_path, call, error, message):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (tmp_path / "notes.txt").write_text("not audio at all\n")
    with pytest.raises(error, match=re.escape(message)):
        call(pipe, tmp_path)


def test_int8_pipeline_answers_and_is_compared_with_float(hub_dir, capsys):
    int8_pipe = pipeline("audio-reasoning", model=str(hub_dir), trust_remote_code=True, int8=True)
    float_pipe = pipeline("audio-reasoning", model=str(hub_dir), trust_remote_code=True)
    # The checkpoint's own (remote) code, so its classes are not this project's: compare by name.
    llm_linears = [type(m).__name__ for m in int8_pipe.model.model.language_model.modules()
                   if isinstance(m, torch.nn.Linear) or hasattr(m, "qweight")]
    assert llm_linears and set(llm_linears) == {"Int8Linear"}
    assert type(int8_pipe.model.lm_head).__name__ == "Int8Linear"
    assert type(float_pipe.model.lm_head) is torch.nn.Linear

    tasks = ["count_beeps", "higher_tone", "what_came_first", "chord_or_note"]
    clips = [generate_clip(task, seed=i) for i, task in enumerate(tasks)]
    items = [{"audio": {"array": c.waveform, "sampling_rate": c.sampling_rate}, "question": c.question,
              "choices": c.choices} for c in clips]
    int8_out, float_out = (p(items, batch_size=len(items), **GREEDY) for p in (int8_pipe, float_pipe))
    assert all(set(o) == {"text", "thinking", "answer", "choice"} and o["text"] for o in int8_out)
    identical = sum(a["text"] == b["text"] for a, b in zip(int8_out, float_out))
    with capsys.disabled():
        print(f"\nint8 vs float pipeline: {identical} of {len(items)} greedy outputs identical")

    # A generation that ends before the token limit is parsed into an answer: end it at its 6th token.
    new_tokens = int8_pipe.forward(int8_pipe._collate([int8_pipe.preprocess(items[0])]), **GREEDY)["new_tokens"][0]
    answered = int8_pipe(items[0], eos_token_id=int(new_tokens[5]), **GREEDY)
    assert answered["answer"] is not None
    with pytest.raises(ValueError, match="cannot be saved"):
        int8_pipe.save_pretrained(str(hub_dir.parent / "int8"))


def test_w8a8_pipeline_quantises_activations_and_names_a_bad_mode(hub_dir):
    w8a8 = pipeline("audio-reasoning", model=str(hub_dir), trust_remote_code=True, int8="w8a8")
    modes = {m.activations for m in w8a8.model.modules() if type(m).__name__ == "Int8Linear"}
    assert modes == {"int8"}
    clip = generate_clip("count_beeps", seed=0)
    out = w8a8({"array": clip.waveform, "sampling_rate": clip.sampling_rate}, question=clip.question, **GREEDY)
    assert out["text"]
    with pytest.raises(ValueError, match="int8 must be one of"):
        pipeline("audio-reasoning", model=str(hub_dir), trust_remote_code=True, int8="int4")
