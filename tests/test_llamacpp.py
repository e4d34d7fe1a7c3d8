"""The language model on llama.cpp (`llamacpp_tinygiant`): the GGUF export, decoding against PyTorch, the pipeline."""

import copy
import threading

import pytest
import torch
from helpers import talkative, tone
from test_fast_path import QUESTIONS, batch
from transformers import LogitsProcessorList, TextIteratorStreamer, pipeline

from int8_tinygiant import quantize_int8
from llamacpp_tinygiant import LlamaCppDecoder, LlamaCppLayer, export_gguf


@pytest.fixture(scope="module")
def lively(model):
    """A copy of the tiny model whose LLM has peaked, varied logits, so that token agreement means something."""
    return talkative(copy.deepcopy(model))


def teacher_forced_logits(decoder, model, inputs, continuation):
    """llama.cpp's logits after the prompt and after each token of `continuation`, and PyTorch's for the same."""
    audio = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    ours = decoder.teacher_forced_logits(model, continuation, inputs["input_ids"], **audio)
    full = torch.cat([inputs["input_ids"], continuation[None]], dim=1)
    with torch.no_grad():
        reference = model(input_ids=full, attention_mask=torch.ones_like(full), **audio).logits[0]
    return ours, reference[inputs["input_ids"].shape[1] - 1:].float()


@pytest.mark.parametrize("weights, min_r", [("bf16", 0.9999), ("q8_0", 0.999)])
def test_llama_cpp_logits_follow_pytorch_through_the_kv_cache(lively, processor, tmp_path, weights, min_r):
    inputs = batch(processor, QUESTIONS[:1], [tone(2.0, freq=700)])
    decoder = LlamaCppDecoder(export_gguf(lively, tmp_path / f"lm-{weights}.gguf", weights))
    continuation = torch.randint(0, lively.config.text_config.vocab_size, (12,))
    ours, reference = teacher_forced_logits(decoder, lively, inputs, continuation)
    assert ours.shape == reference.shape
    for position in range(len(ours)):  # positions and the KV cache right: every step agrees, not only the first
        r = torch.corrcoef(torch.stack([ours[position], reference[position]]))[0, 1]
        assert r > min_r, (position, float(r))
    top3 = ours.topk(3, dim=-1).indices  # PyTorch's choice is always among llama.cpp's best (near-ties may swap)
    assert (top3 == reference.argmax(-1, keepdim=True)).any(-1).all()


def test_generate_matches_pytorch_greedy_on_a_left_padded_batch(lively, processor, tmp_path):
    inputs = batch(processor, QUESTIONS[:3], [tone(1.0, freq=300), tone(3.0, freq=1200), tone(2.0, freq=2000)])
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 3  # left padding really in play
    greedy = dict(max_new_tokens=10, do_sample=False, eos_token_id=None)
    plain = lively.generate(**inputs, **greedy)
    decoder = LlamaCppDecoder(export_gguf(lively, tmp_path / "lm.gguf", "bf16"))
    ours = decoder.generate(lively, **inputs, **greedy)
    assert ours.shape == plain.shape and torch.equal(ours[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    new = plain.shape[1] - inputs["input_ids"].shape[1]
    agree = (ours[:, -new:] == plain[:, -new:]).float().mean()
    assert agree >= 0.9, float(agree)
    assert len({tuple(row) for row in plain[:, -new:].tolist()}) > 1  # the rows differ: the test is not trivial


def test_generate_stops_at_eos_pads_and_honours_processors_and_min_new_tokens(lively, processor, tmp_path):
    inputs = batch(processor, QUESTIONS[:2], [tone(1.0, freq=300), tone(2.0, freq=900)])
    decoder = LlamaCppDecoder(export_gguf(lively, tmp_path / "lm.gguf", "bf16"))
    prompt = inputs["input_ids"].shape[1]
    first = decoder.generate(lively, **inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)[:, prompt:]
    eos = int(first[0, 2])  # the third token of row 0 becomes "end of sequence"
    stop = first[0].tolist().index(eos) + 1  # where it first appears
    out = decoder.generate(lively, **inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    row = out[0, prompt:].tolist()
    assert row[:stop] == first[0, :stop].tolist() and row[stop:] == [0] * (len(row) - stop)
    # min_new_tokens suppresses the end token until then; a processor sees every step's scores
    seen = []
    recorder = LogitsProcessorList([lambda ids, scores: seen.append(ids.shape[1]) or scores])
    longer = decoder.generate(lively, **inputs, max_new_tokens=6, min_new_tokens=5, do_sample=False,
                              eos_token_id=eos, logits_processor=recorder)[0, prompt:].tolist()
    assert eos not in longer[:5]
    assert seen[:2] == [prompt, prompt + 1]


def test_sampling_uses_the_generation_config_and_a_seeded_generator(lively, processor, tmp_path):
    inputs = batch(processor, QUESTIONS[:1], [tone(1.0, freq=300)])
    decoder = LlamaCppDecoder(export_gguf(lively, tmp_path / "lm.gguf", "bf16"))
    def sample(seed, **kw):
        return decoder.generate(lively, **inputs, max_new_tokens=12, do_sample=True, eos_token_id=None,
                                generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(0, temperature=2.0), sample(0, temperature=2.0))
    assert not torch.equal(sample(0, temperature=2.0), sample(1, temperature=2.0))
    greedy = decoder.generate(lively, **inputs, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(sample(3, top_k=1), greedy)  # top-k 1 leaves only the argmax
    with pytest.raises(ValueError, match="beam"):
        decoder.generate(lively, **inputs, num_beams=2)
    with pytest.raises(ValueError, match="does not take"):
        decoder.generate(lively, **inputs, no_such_setting=1)


def test_from_model_frees_the_pytorch_layers_and_refuses_a_silent_torch_pass(lively, processor):
    moved = copy.deepcopy(lively)
    decoder = LlamaCppDecoder.from_model(moved, weights="bf16")
    assert all(isinstance(layer, LlamaCppLayer) for layer in moved.model.language_model.layers)
    inputs = batch(processor, QUESTIONS[:1], [tone(1.0, freq=300)])
    with pytest.raises(RuntimeError, match="llama.cpp"):
        moved.generate(**inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match="already runs on llama.cpp"):
        export_gguf(moved, "unused.gguf")
    greedy = dict(max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(decoder.generate(moved, **inputs, **greedy), lively.generate(**inputs, **greedy))


def test_an_int8_model_exports_from_its_dequantised_weights(lively, processor, tmp_path):
    inputs = batch(processor, QUESTIONS[:1], [tone(2.0, freq=700)])
    int8 = quantize_int8(copy.deepcopy(lively))
    decoder = LlamaCppDecoder(export_gguf(int8, tmp_path / "int8.gguf", "bf16"))
    ours, reference = teacher_forced_logits(decoder, int8, inputs, torch.tensor([5, 9, 13]))
    assert min(torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(ours, reference)) > 0.999


def test_pipeline_on_llama_cpp_answers_like_the_pytorch_pipeline(tiny_dir, tmp_path):
    gguf = tmp_path / "cached" / "lm.gguf"
    audio = {"array": tone(2.0, freq=500), "sampling_rate": 16000}
    call = dict(question="How many beeps are there?", choices=["one", "two"], max_new_tokens=16, do_sample=False)
    torch_pipe = pipeline("audio-reasoning", model=str(tiny_dir), trust_remote_code=True)
    fast = pipeline("audio-reasoning", model=str(tiny_dir), trust_remote_code=True, llama_cpp=str(gguf), int8=True)
    assert gguf.is_file() and fast.llama_cpp is not None
    plain, ours = torch_pipe(audio, **call), fast(audio, **call)
    assert set(ours) == set(plain) and isinstance(ours["text"], str)
    # the GGUF written on first use is read, not rewritten, by the next pipeline
    written = gguf.stat().st_mtime_ns
    again = pipeline("audio-reasoning", model=str(tiny_dir), trust_remote_code=True, llama_cpp=str(gguf))
    assert gguf.stat().st_mtime_ns == written and again(audio, **call)["text"] == fast(audio, **call)["text"]
    # streaming through the llama.cpp decoder
    streamer = TextIteratorStreamer(fast.tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(target=fast, args=(audio,), kwargs={**call, "streamer": streamer})
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed.strip() == fast.tokenizer.decode(
        fast.tokenizer(fast(audio, **call)["text"])["input_ids"], skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="cannot be saved"):
        fast.save_pretrained(tmp_path / "saved")
    with pytest.raises(ValueError, match="llama_cpp must be"):
        pipeline("audio-reasoning", model=str(tiny_dir), trust_remote_code=True, llama_cpp="q4_0")


def test_the_context_grows_with_the_request_and_a_fixed_one_refuses_what_does_not_fit(lively, processor, tmp_path):
    inputs = batch(processor, QUESTIONS[:1], [tone(1.0, freq=300)])
    path = export_gguf(lively, tmp_path / "lm.gguf", "bf16")
    greedy = dict(do_sample=False, eos_token_id=None)
    prompt = inputs["input_ids"].shape[1]
    small = LlamaCppDecoder(path, n_ctx=prompt + 4)
    assert small.generate(lively, **inputs, max_new_tokens=4, **greedy).shape[1] == prompt + 4
    with pytest.raises(ValueError, match="do not fit"):
        small.generate(lively, **inputs, max_new_tokens=5, **greedy)
    growing = LlamaCppDecoder(path)
    start = growing.n_ctx
    needed = start + 1 - prompt  # one token past the first context: it must double, keeping the sequence right
    out = growing.generate(lively, **inputs, max_new_tokens=needed, **greedy)
    assert growing.n_ctx == min(2 * start, growing.max_ctx) and out.shape[1] == prompt + needed
    assert torch.equal(out[:, :prompt + 4], small.generate(lively, **inputs, max_new_tokens=4, **greedy))


def test_tinygiant_export_gguf_writes_the_language_model(tiny_dir, tmp_path, model, processor, capsys):
    """`tinygiant export gguf MODEL_DIR OUT.gguf` (tinygiant/export/): a GGUF that decodes as the model's own export."""
    from tinygiant import cli

    out = tmp_path / "exported.gguf"
    assert cli.main(["export", "gguf", str(tiny_dir), str(out), "--weights", "bf16"]) == 0
    inputs = batch(processor, QUESTIONS[:1], [tone(1.5, freq=500)])
    greedy = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    direct = LlamaCppDecoder(export_gguf(model, tmp_path / "direct.gguf", "bf16"))
    reference = direct.generate(model, **inputs, **greedy)
    assert torch.equal(LlamaCppDecoder(out).generate(model, **inputs, **greedy), reference)
    assert cli.main(["export", "gguf", str(tmp_path), str(tmp_path / "none.gguf")]) == 1
    assert "is not a TinyGiant checkpoint: it lacks config.json" in capsys.readouterr().err
