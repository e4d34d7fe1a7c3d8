"""The fast inference path (`generate_with_static_cache`: static KV cache) and int8 weights (`quantize_int8`) on the
tiny model."""

import copy
import weakref

import pytest
import torch
from helpers import chat, tone

from int8_tinygiant import Int8Embedding, Int8Linear, load_int8, quantize_activations, quantize_int8
from modeling_tinygiant import TinyGiantForConditionalGeneration

GREEDY = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
QUESTIONS = ["How many beeps are there?", "Is it a chord?", "What came first, the tone or the noise?",
             "Which tone is higher?", "Is there speech in the clip?", "What is the sound?"]


def batch(processor, questions, audios):
    texts = [processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in questions]
    return processor(text=texts, audio=[{"array": a, "sampling_rate": 16000} for a in audios], padding_side="left")


def test_generate_with_static_cache_gives_the_plain_greedy_tokens(model, processor):
    inputs = batch(processor, QUESTIONS[:3], [tone(1.0, freq=300), tone(31.0, freq=1200), tone(3.0, freq=2000)])
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 3  # left padding really in play
    plain = model.generate(**inputs, **GREEDY)
    fast = model.generate_with_static_cache(**inputs, **GREEDY)
    assert torch.equal(plain, fast)
    single = batch(processor, QUESTIONS[3:4], [tone(2.0, freq=700)])
    assert torch.equal(model.generate(**single, **GREEDY), model.generate_with_static_cache(**single, **GREEDY))


def test_int8_linear_matches_the_float_layer():
    torch.manual_seed(0)
    for in_features, out_features in ((32, 48), (24, 40)):  # kernel path (multiple of 16) and dequantising fallback
        linear = torch.nn.Linear(in_features, out_features).to(torch.bfloat16)
        q = Int8Linear.from_linear(linear)
        assert q.qweight.dtype == torch.int8 and q.weight.dtype == torch.bfloat16
        for rows in (1, 5, 40):  # decoding-sized and prefill-sized inputs take different kernels
            x = torch.randn(rows, in_features, dtype=torch.bfloat16)
            ref, out = linear(x).float(), q(x).float()
            assert out.shape == ref.shape
            assert (out - ref).abs().max() <= 0.02 * ref.abs().max()


def test_quantize_int8_replaces_linears_and_mostly_agrees_with_float(model, processor):
    quantized = quantize_int8(copy.deepcopy(model))
    inner = quantized.model
    assert not any(type(m) is torch.nn.Linear for e in inner.audio_encoders() for m in e.modules())
    assert not any(type(m) is torch.nn.Linear for m in inner.language_model.modules())
    assert isinstance(quantized.lm_head, Int8Linear) and isinstance(inner.language_model.embed_tokens, Int8Embedding)
    assert inner.language_model.embed_tokens.head is quantized.lm_head  # still one (tied) table
    int8_bytes = sum(b.numel() for m in quantized.modules() if isinstance(m, Int8Linear) for b in (m.qweight,))
    assert int8_bytes > 0.8 * sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert type(model.lm_head) is torch.nn.Linear  # the original is untouched

    audios = [tone(2.0, freq=f) for f in (300, 600, 900, 1500, 2500, 4000)]
    inputs = batch(processor, QUESTIONS, audios)
    with torch.no_grad():
        ref_logits, q_logits = model(**inputs).logits[:, -1], quantized(**inputs).logits[:, -1]
    r = torch.corrcoef(torch.stack([ref_logits.flatten(), q_logits.flatten()]))[0, 1]
    assert r > 0.99, r
    prompt = inputs["input_ids"].shape[1]
    ref, out = model.generate(**inputs, **GREEDY)[:, prompt:], quantized.generate(**inputs, **GREEDY)[:, prompt:]
    assert (ref[:, 0] == out[:, 0]).float().mean() >= 5 / 6  # first answer token of 6 prompts
    agreement = (ref == out).float().mean()  # after a first difference the two continue from different text
    assert agreement >= 0.75, agreement


def test_quantize_int8_drops_each_float_weight_as_it_goes(tiny_dir, monkeypatch):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval()
    float_weights = [weakref.ref(m.weight) for m in model.modules() if type(m) is torch.nn.Linear]
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    live_when_quantising = []
    from_linear = Int8Linear.from_linear

    def counting_from_linear(linear, *args):
        live_when_quantising.append(sum(w() is not None for w in float_weights))
        return from_linear(linear, *args)

    monkeypatch.setattr(Int8Linear, "from_linear", counting_from_linear)
    quantize_int8(model)
    # While the i-th layer is quantised, the float weights of the layers before it are already gone.
    assert live_when_quantising == list(range(len(float_weights), 0, -1))
    assert all(w() is None for w in float_weights)  # the tied embedding / LM head table included
    assert not any(p.dim() == 2 for p in model.model.language_model.parameters())
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < 0.2 * float_bytes  # convs, norms, MHA


def test_w8a8_linear_quantises_activations_per_token_and_matches_the_float_layer(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    q = Int8Linear.from_linear(linear, activations="int8")
    int_mm_calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: int_mm_calls.append((a.dtype, b.dtype)) or int_mm(a, b))
    x = torch.randn(40, 64, dtype=torch.bfloat16)
    x[3] *= 1000  # one loud token must not cost the others their precision (per-token scales)
    ref, out = linear(x).float(), q(x).float()
    assert int_mm_calls == [(torch.int8, torch.int8)]
    for row in (0, 3, 39):
        assert (out[row] - ref[row]).abs().max() <= 0.03 * ref[row].abs().max(), row
    qx, scales = quantize_activations(x.float())
    assert qx.dtype == torch.int8 and int(qx.abs().max()) == 127 and scales.shape == (40, 1)
    q(torch.randn(1, 64, dtype=torch.bfloat16))  # a decoding-sized input takes the weight-only kernel
    assert len(int_mm_calls) == 1
    with pytest.raises(ValueError, match="activations"):
        Int8Linear.from_linear(linear, activations="int4")


def test_w8a8_model_agrees_with_float_and_generation_matches_its_fast_path(model, processor):
    quantized = quantize_int8(copy.deepcopy(model), activations="int8")
    assert {m.activations for m in quantized.modules() if isinstance(m, Int8Linear)} == {"int8"}
    inputs = batch(processor, QUESTIONS[:4], [tone(2.0, freq=f) for f in (300, 900, 2500, 4000)])
    with torch.no_grad():
        ref_logits, q_logits = model(**inputs).logits[:, -1], quantized(**inputs).logits[:, -1]
    r = torch.corrcoef(torch.stack([ref_logits.flatten(), q_logits.flatten()]))[0, 1]
    assert r > 0.98, r
    assert torch.equal(quantized.generate(**inputs, **GREEDY), quantized.generate_with_static_cache(**inputs, **GREEDY))


def test_load_int8_gives_the_model_quantise_after_load_gives(tiny_dir):
    after = quantize_int8(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval(),
                          activations="int8")
    while_loading = load_int8(TinyGiantForConditionalGeneration, tiny_dir, torch.bfloat16, activations="int8")
    expected, got = after.state_dict(), while_loading.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert dict(after.named_buffers()).keys() == dict(while_loading.named_buffers()).keys()
    for name, buffer in after.named_buffers():  # non-persistent ones (rotary frequencies) included
        assert torch.equal(dict(while_loading.named_buffers())[name], buffer), name
    assert while_loading.model.language_model.embed_tokens.head is while_loading.lm_head


def test_load_int8_names_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_int8(TinyGiantForConditionalGeneration, tmp_path)


@pytest.mark.parametrize("int8", [True, "w8a8"])
def test_int8_inference_never_dequantises_a_weight_to_read_it(tiny_dir, monkeypatch, int8):
    """Reading a dtype or a device off an int8 layer must not allocate its float matrix: the pipeline's whole path
    (processor, encoders, projector, prefill, decoding) runs with `Int8Linear.weight` refusing to be read."""
    from pipeline_tinygiant import load_pipeline

    pipe = load_pipeline(tiny_dir, int8=int8)
    int8_linear = type(pipe.model.model.projector.input_proj)  # the checkpoint's own copy of the class
    assert int8_linear.__name__ == "Int8Linear"

    def refuse(layer):
        raise AssertionError("an int8 layer's float weight was materialised just to be read")

    monkeypatch.setattr(int8_linear, "weight", property(refuse))
    output = pipe(tone(1.0), sampling_rate=16000, question="What is the sound?", max_new_tokens=4, do_sample=False)
    assert output["text"] is not None
