"""Audio inside chat messages: the processor's `apply_chat_template`, conversations in the pipeline, `any-to-any`,
streaming, and the in-memory cache of the frozen encoders' outputs."""

import functools
import http.server
import threading

import pytest
import soundfile
import torch
from helpers import talkative, tone
from transformers import TextIteratorStreamer, pipeline

from int8_tinygiant import quantize_int8
from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import SYSTEM_PROMPT
from pipeline_tinygiant import Conversation, TinyGiantAudioReasoningPipeline
from tinygiant.hub.publish import save_checkpoint

GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


def user(audio_item, text):
    return {"role": "user", "content": [{"type": "audio", **audio_item}, {"type": "text", "text": text}]}


def tokenized(processor, conversation, **kwargs):
    return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         **kwargs)


def reference(processor, conversation, audio, **kwargs):
    """What the two-step route gives: render the prompt, then `processor(text=..., audio=...)`."""
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(text=prompt, audio=audio, **kwargs)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "clip.wav"
    soundfile.write(path, tone(2.0, 16000, freq=600.0), 16000)
    return path


@pytest.fixture(scope="module")
def served(wav):
    """`wav` served over http on 127.0.0.1, for `{"type": "audio", "url": ...}`."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wav.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/{wav.name}"
    server.shutdown()


def test_every_form_of_chat_audio_gives_the_processors_tensors(processor, wav, served):
    array = tone(2.0, 16000, freq=600.0)
    expected = reference(processor, [user({}, "What is it?")], str(wav))
    items = [{"path": str(wav)}, {"url": served}, {"audio": wav.read_bytes()},
             {"audio": {"array": soundfile.read(wav, dtype="float32")[0], "sampling_rate": 16000}},
             {"audio": soundfile.read(wav, dtype="float32")[0], "sampling_rate": 16000}]
    for item in items:
        got = tokenized(processor, [user(item, "What is it?")])
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (item.keys(), key)
    # The float array differs from the 16-bit file only by quantisation.
    from_array = tokenized(processor, [user({"audio": array, "sampling_rate": 16000}, "What is it?")])
    torch.testing.assert_close(from_array["whisper_input_features"], expected["whisper_input_features"], atol=1e-2,
                               rtol=0)


def test_an_array_is_read_at_its_own_rate_and_never_at_a_guessed_one(processor):
    at_16k = tokenized(processor, [user({"audio": tone(2.0, 16000), "sampling_rate": 16000}, "How long?")])
    assert at_16k["whisper_lengths"].tolist() == [100]  # 2 s at 50 frames/s, not 2/3 s
    with pytest.raises(ValueError, match="an audio item with an array needs its rate"):
        tokenized(processor, [user({"audio": tone(2.0, 16000)}, "How long?")])
    with pytest.raises(ValueError, match="needs 'path', 'url' or 'audio'"):
        tokenized(processor, [user({}, "How long?")])


def test_multi_turn_several_audios_and_assistant_only_labels(processor):
    first, second = tone(1.0, freq=300), tone(3.0, freq=2000)
    conversation = [
        user({"audio": first, "sampling_rate": 16000}, "What is it?"),
        {"role": "assistant", "content": "A low tone.", "reasoning_content": "It is low."},
        user({"audio": second, "sampling_rate": 16000}, "And this one?"),
    ]
    got = tokenized(processor, conversation, output_labels=True)
    expected = reference(processor, conversation, [first, second], sampling_rate=16000, output_labels=True)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert got["whisper_lengths"].tolist() == [50, 150]  # each audio where its item stands, in order
    ids = got["input_ids"][0]
    placeholders = (ids == processor.audio_token_id).nonzero()[:, 0]
    assert len(placeholders) == 600 and placeholders[299] + 1 < placeholders[300]  # two separate blocks
    learned = processor.tokenizer.decode(ids[got["labels"][0] != -100])
    assert learned == "<think>\nIt is low.\n</think>\n\nA low tone.<|im_end|>"


def test_batched_conversations_pad_on_the_left(processor, wav):
    short = [user({"path": str(wav)}, "Why?")]
    long = [user({"path": str(wav)}, "How many beeps are there, and which tone is higher?")]
    batch = tokenized(processor, [short, long])
    alone = tokenized(processor, short)
    assert batch["input_ids"].shape[0] == 2 and batch["whisper_input_features"].shape[0] == 2
    width = alone["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0, -width:], alone["input_ids"][0])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


def test_audio_cache_skips_the_encoders_and_keeps_greedy_tokens(tiny_dir, processor):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval()
    calls = []
    for encoder in model.model.audio_encoders():
        encoder.register_forward_hook(lambda *_: calls.append(1))
    clip = {"audio": tone(2.0, freq=440), "sampling_rate": 16000}
    first = tokenized(processor, [user(clip, "What is it?")])
    follow_up = tokenized(processor, [user(clip, "What is it?"), {"role": "assistant", "content": "A tone."},
                                      {"role": "user", "content": "How high is it?"}])
    without = [model.generate(**inputs, **GREEDY) for inputs in (first, follow_up)]
    calls.clear()

    cache = model.enable_audio_cache(max_items=2)
    with_cache = [model.generate(**inputs, **GREEDY) for inputs in (first, follow_up)]
    assert all(torch.equal(a, b) for a, b in zip(without, with_cache))
    assert len(calls) == 3 and (cache.hits, cache.misses, len(cache)) == (1, 1, 1)  # encoded once, for the first

    # A batch mixing a cached and a new clip encodes only the new one; the oldest entry goes past `max_items`.
    other = {"audio": tone(1.0, freq=900), "sampling_rate": 16000}
    third = {"audio": tone(1.5, freq=1500), "sampling_rate": 16000}
    calls.clear()
    model.generate(**tokenized(processor, [[user(clip, "Again?")], [user(other, "And this?")]]), **GREEDY)
    assert len(calls) == 3 and (cache.hits, cache.misses) == (2, 2)
    model.generate(**tokenized(processor, [user(third, "And now?")]), **GREEDY)
    assert len(cache) == 2  # `clip`, the least recently used, was evicted
    calls.clear()
    model.generate(**tokenized(processor, [user(other, "And this?")]), **GREEDY)
    model.generate(**tokenized(processor, [user(clip, "Once more?")]), **GREEDY)
    assert len(calls) == 3  # `other` came from the cache, `clip` was encoded again

    # Entries never outlive what made them: the padding switch is part of the key, quantising empties the cache.
    misses = cache.misses
    model.config.whisper_trim_padding = True
    model.generate(**tokenized(processor, [user(other, "And this?")]), **GREEDY)
    model.config.whisper_trim_padding = False
    assert cache.misses == misses + 1  # `other` is cached, but with the padded Whisper frames
    quantize_int8(model)
    assert len(cache) == 0

    model.disable_audio_cache()
    assert model.model.audio_cache is None
    with pytest.raises(ValueError, match="max_items"):
        model.enable_audio_cache(0)


@pytest.fixture(scope="module")
def pipe(tiny_dir, processor):
    model = talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())
    return TinyGiantAudioReasoningPipeline(model=model, processor=processor)


def test_pipeline_continues_a_conversation_and_reuses_the_clip(pipe, wav):
    cache = pipe.model.model.audio_cache
    assert cache is not None and cache.max_items == 32  # on by default in the pipeline
    conversation = [user({"path": str(wav)}, "Which is it?\n(a) dog\n(b) tone")]
    out = pipe(conversation, choices=["dog", "tone"], **GREEDY)
    asked = out["generated_text"]
    assert asked[:-1] == conversation and asked[-1]["role"] == "assistant"
    assert asked[-1]["content"] == (out["answer"] or "") and asked[-1]["reasoning_content"] == out["thinking"]
    assert {"text", "thinking", "answer", "choice"} <= set(out)
    # The same question through the audio-reasoning signature: the same tokens (same prompt and audio).
    assert out["text"] == pipe(str(wav), question="Which is it?", choices=["dog", "tone"], **GREEDY)["text"]

    hits = cache.hits
    follow_up = pipe(asked + [{"role": "user", "content": "Are you sure?"}], **GREEDY)
    assert cache.hits == hits + 1 and len(follow_up["generated_text"]) == 4
    # The default system prompt goes first when the conversation has none, and never twice.
    prompt = pipe.processor.tokenizer.decode(pipe.preprocess(Conversation(conversation))["input_ids"][0])
    assert prompt.count(SYSTEM_PROMPT) == 1

    batch = pipe([conversation, conversation[:1]], batch_size=2, **GREEDY)
    assert [b["text"] for b in batch] == [out["text"]] * 2
    with pytest.raises(ValueError, match="conversation carries its own questions"):
        pipe(conversation, question="What?")


def test_pipeline_streams_a_conversation(pipe, wav):
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(pipe([user({"path": str(wav)}, "What?")],
                                                               streamer=streamer, **GREEDY)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 1 and "".join(pieces) == result["text"]


def test_any_to_any_pipeline_on_a_tinygiant_folder(tmp_path, pipe, wav):
    folder = save_checkpoint(pipe.model, pipe.processor, tmp_path / "hub")
    generic = pipeline("any-to-any", model=str(folder), trust_remote_code=True)
    conversation = [{"role": "system", "content": SYSTEM_PROMPT}, user({"path": str(wav)}, "What?")]
    out = generic(text=conversation, generate_kwargs=GREEDY)[0]
    assert out["generated_text"][:-1] == conversation
    reply = out["generated_text"][-1]
    ours = pipe(conversation, **GREEDY)
    assert reply["role"] == "assistant" and reply["content"] == ours["text"]
