"""TinyGiantModel / TinyGiantForConditionalGeneration on a tiny random checkpoint."""

import pytest
import torch
from helpers import chat, tone

from configuration_tinygiant import TinyGiantConfig
from modeling_tinygiant import (
    EBranchformerBlock,
    QueryGuidedProjector,
    TinyGiantAudioModel,
    TinyGiantForConditionalGeneration,
)
from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint


def prompt(processor, question, audio, sampling_rate=16000, **kwargs):
    text = processor.apply_chat_template(chat(question), add_generation_prompt=True, tokenize=False)
    return processor(text=text, audio=audio, sampling_rate=sampling_rate, **kwargs)


def tiny_config(**kwargs):
    config = TinyGiantConfig(
        whisper_config=dict(d_model=24, num_mel_bins=128), htsat_config=dict(hidden_size=40),
        clap_config=dict(hidden_size=56), text_config=dict(hidden_size=32, vocab_size=50),
        projector_heads=4, cgmlp_dim=48, ffn_dim=64, **kwargs,
    )
    return config


@pytest.mark.parametrize("use_intent_query, use_clap_gate",
                         [(True, True), (False, True), (True, False), (False, False)])
def test_projector_stages_shapes_and_switches(use_intent_query, use_clap_gate):
    config = tiny_config(use_intent_query=use_intent_query, use_clap_gate=use_clap_gate)
    projector = QueryGuidedProjector(config).eval()
    assert hasattr(projector, "intent_attn") == use_intent_query and hasattr(projector, "clap_gate") == use_clap_gate
    whisper_frames, htsat_frames = torch.randn(3, 300, 24), torch.randn(3, 300, 40)
    query = torch.randn(3, 32) if use_intent_query else None
    clap = torch.randn(3, 56) if use_clap_gate else None
    out = projector(whisper_frames, htsat_frames, query, clap)
    assert out.shape == (3, 300, 32)
    if use_clap_gate:  # Stage C ends in a LayerNorm (eq. 15): zero mean, unit variance per token
        torch.testing.assert_close(out.mean(-1), torch.zeros(3, 300), atol=1e-5, rtol=0)
    if use_intent_query:  # Stage B reads the query: another instruction gives other embeddings
        assert not torch.allclose(out, projector(whisper_frames, htsat_frames, torch.randn(3, 32), clap))


def test_ebranchformer_block_merges_branches_per_token():
    block = EBranchformerBlock(tiny_config()).eval()
    x = torch.randn(2, 300, 32)
    assert block(x).shape == x.shape
    weights = block.merge(torch.randn(2, 300, 64)).softmax(-1)  # eq. (8): two weights per token summing to one
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 300))
    assert block.depthwise_conv.groups == 48 and block.depthwise_conv.kernel_size == (17,)
    # The convolution branch is local: changing the last frame leaves early frames' conv output unchanged.
    y = x.clone()
    y[:, -1] += 1
    def conv(t):
        return block.conv_out(torch.nn.functional.gelu(block.depthwise_conv(
            torch.nn.functional.gelu(block.conv_in(t)).transpose(1, 2)).transpose(1, 2)))

    assert torch.equal(conv(x)[:, :280], conv(y)[:, :280])


def test_ablation_switches_skip_their_computation(tmp_path, processor):
    model, _ = write_tiny_checkpoint(tmp_path, use_intent_query=False, use_clap_gate=False)
    assert model.model.clap_encoder is None and not hasattr(model.model.projector, "intent_attn")
    reloaded = TinyGiantForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = prompt(processor, "What is it?", tone(2.0))
    batch.pop("instruction_mask")  # not needed without Stage B
    assert torch.isfinite(reloaded(**batch).logits).all()


def test_gradients_reach_projector_and_llm_never_encoders(tiny_dir, processor):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).train()
    messages = chat("How many beeps?", answer="Three.", reasoning="<SUMMARY>three</SUMMARY>")
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(text=text, audio=tone(3.0), sampling_rate=16000, output_labels=True)
    model(**batch).loss.backward()
    encoders = model.model.audio_encoders()
    assert len(encoders) == 3 and all(not e.training for e in encoders)
    assert all(not p.requires_grad and p.grad is None for e in encoders for p in e.parameters())
    for module in (model.model.projector, model.model.language_model):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # The intent query and the gate are on the gradient path too.
    assert model.model.projector.intent_attn.in_proj_weight.grad.abs().sum() > 0
    assert model.model.projector.clap_gate.weight.grad.abs().sum() > 0


def test_audio_changes_the_output_and_the_instruction_matters(model, processor):
    a = prompt(processor, "How many beeps?", tone(2.0, freq=300))
    b = prompt(processor, "How many beeps?", tone(2.0, freq=3000))
    c = prompt(processor, "Is there speech?", tone(2.0, freq=300))
    with torch.no_grad():
        audio_a = model.model.get_audio_features(
            a["whisper_input_features"], a["clap_input_features"], a["whisper_lengths"], a["htsat_lengths"],
            model.model.get_intent_query(model.get_input_embeddings()(a["input_ids"]), a["instruction_mask"],
                                         a["input_ids"] == model.config.audio_token_id),
        ).pooler_output
        logits = [model(**x).logits[0, -1] for x in (a, b, c)]
    assert audio_a.shape == (1, 300, model.config.text_config.hidden_size)
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[0], logits[2])


def test_the_audio_half_alone_gives_the_models_audio_embeddings(model, processor):
    """`TinyGiantAudioModel` (what an engine with its own LLM runs) holds the checkpoint's `model.*` audio weights
    under the same names and gives the same embeddings for the same intent query."""
    audio_model = TinyGiantAudioModel(model.config)
    weights = {k.removeprefix("model."): v for k, v in model.state_dict().items()
               if k.startswith("model.") and not k.startswith("model.language_model.")}
    assert set(weights) == set(audio_model.state_dict())
    audio_model.load_state_dict(weights)
    audio_model.eval()
    x = prompt(processor, "How many beeps?", tone(2.0, freq=300))
    query = torch.randn(1, model.config.text_config.hidden_size)
    features = [x["whisper_input_features"], x["clap_input_features"], x["whisper_lengths"], x["htsat_lengths"], query]
    with torch.no_grad():
        torch.testing.assert_close(audio_model.get_audio_features(*features).pooler_output,
                                   model.model.get_audio_features(*features).pooler_output)


@pytest.mark.parametrize("seconds", [5, 29, 31, 65])
def test_forward_on_short_and_long_audio(model, processor, seconds):
    batch = prompt(processor, "Describe the clip.", tone(seconds, 8000), sampling_rate=8000)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.logits).all()


def test_placeholder_count_mismatch_raises(model, processor):
    batch = prompt(processor, "What is it?", tone(1.0))
    ids = batch["input_ids"].clone()
    first = (ids[0] == model.config.audio_token_id).nonzero()[0, 0]
    ids[0, first] = 0  # one placeholder lost, e.g. to truncation
    batch["input_ids"] = ids
    with pytest.raises(ValueError, match=r"\[299\] audio placeholder tokens per sample but 1 audios need 300 each"):
        model(**batch)


def test_audio_is_encoded_once_per_generate(model, processor):
    calls = []
    hooks = [e.register_forward_hook(lambda *_: calls.append(1)) for e in model.model.audio_encoders()]
    # A pipeline on the shared model may have set an audio cache.
    audio_cache, model.model.audio_cache = model.model.audio_cache, None
    try:
        model.generate(**prompt(processor, "What is it?", tone(1.0)),
                       max_new_tokens=5, min_new_tokens=5, do_sample=False)
    finally:
        model.model.audio_cache = audio_cache
        for h in hooks:
            h.remove()
    assert len(calls) == 3  # Whisper, HTS-AT and CLAP once each, at prefill


def greedy(model, batch, n=6):
    out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, batch["input_ids"].shape[1]:]


def test_batched_generation_equals_one_by_one(model, processor):
    questions = ["How many beeps are there?", "Is it a chord?", "What came first, the tone or the noise here?"]
    audios = [tone(1.0, freq=300), tone(31.0, 8000, freq=1200), tone(3.0, freq=2000)]
    rates = [16000, 8000, 16000]
    texts = [processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in questions]
    audio_dicts = [{"array": a, "sampling_rate": r} for a, r in zip(audios, rates)]
    batch = processor(text=texts, audio=audio_dicts, padding_side="left")
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # really different lengths, left padded
    batched = greedy(model, batch)
    for i in range(3):
        single = greedy(model, processor(text=texts[i], audio=audio_dicts[i]))
        assert torch.equal(batched[i], single[0])


def test_expanded_generation_keeps_each_audio_with_its_sample(model, processor):
    texts = [processor.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=False) for q in ("A?", "B?")]
    audios = [{"array": tone(35.0, 8000, freq=500), "sampling_rate": 8000},
              {"array": tone(2.0), "sampling_rate": 16000}]
    batch = processor(text=texts, audio=audios)
    input_ids, kwargs = model._expand_inputs_for_generation(expand_size=2, input_ids=batch["input_ids"],
                                                            **{k: v for k, v in batch.items() if k != "input_ids"})
    with torch.no_grad():
        expanded = model(input_ids=input_ids, **kwargs).logits[:, -1]
        original = model(**batch).logits[:, -1]
    torch.testing.assert_close(expanded, original.repeat_interleave(2, dim=0), atol=1e-5, rtol=1e-5)
    sequences = model.generate(**batch, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert sequences.shape[0] == 4


def test_save_and_load_give_identical_outputs(model, processor, tmp_path):
    batch = prompt(processor, "What is it?", tone(2.0))
    model.save_pretrained(tmp_path)
    reloaded = TinyGiantForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert not any(p.requires_grad for e in reloaded.model.audio_encoders() for p in e.parameters())
    # Tied, as in Qwen3-0.6B.
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_from_components_loads_each_parts_weights(tmp_path):
    from transformers import AutoModelForCausalLM, ClapModel, WhisperForConditionalGeneration

    from tinygiant.hub.assemble import from_components
    from tinygiant.hub.tiny_checkpoint import save_tiny_components

    parts = save_tiny_components(tmp_path)
    model, processor = from_components(**parts, projector_heads=4, cgmlp_dim=32, ffn_dim=32)
    whisper = WhisperForConditionalGeneration.from_pretrained(parts["whisper"]).model.encoder
    clap = ClapModel.from_pretrained(parts["clap"]).audio_model
    llm = AutoModelForCausalLM.from_pretrained(parts["llm"])
    for ours, theirs in ((model.model.whisper_encoder, whisper), (model.model.clap_encoder, clap),
                         (model.model.language_model, llm.model)):
        theirs_state = theirs.state_dict()
        assert all(torch.equal(v, theirs_state[k]) for k, v in ours.state_dict().items())
    audio_token_id = processor.tokenizer.convert_tokens_to_ids("<audio>")
    assert model.config.audio_token_id == processor.audio_token_id == audio_token_id
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight


def test_default_config_is_the_papers_full_size_model():
    with torch.device("meta"):
        model = TinyGiantForConditionalGeneration(TinyGiantConfig())
    def count(module):
        return sum(p.numel() for p in module.parameters())

    encoders = sum(count(e) for e in model.model.audio_encoders())
    total = count(model)  # lm_head is tied to the embeddings, so counted once
    assert 0.72e9 <= encoders <= 0.745e9, encoders  # paper: 732 M
    assert 1.30e9 <= total <= 1.50e9, total
    assert model.config.text_config.hidden_size == 1024 and model.config.num_audio_tokens == 300
