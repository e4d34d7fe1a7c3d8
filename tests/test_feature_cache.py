"""The training feature cache: cached encoder outputs give the same results as live encoders; hits and misses."""

import pytest
import torch
from helpers import chat, tone

from modeling_tinygiant import TinyGiantForConditionalGeneration
from tinygiant.training.feature_cache import AudioFeatureCache, audio_key, encoder_fingerprint


def batch_for(processor, audios, answer="Three."):
    texts = [processor.apply_chat_template(chat("How many beeps?", answer=answer), tokenize=False) for _ in audios]
    return processor(text=texts, audio=[{"array": a, "sampling_rate": 16000} for a in audios], output_labels=True,
                     padding_side="right")


def test_cached_features_give_the_same_loss_logits_and_generation(model, processor, tmp_path):
    audios = [tone(2.0, freq=300), tone(12.0, freq=2000)]
    cache = AudioFeatureCache(tmp_path, model, processor)
    keys = cache.encode([{"array": a, "sampling_rate": 16000} for a in audios])
    batch = batch_for(processor, audios)
    text_only = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "instruction_mask", "labels")}
    calls = []
    hooks = [e.register_forward_hook(lambda *_: calls.append(1)) for e in model.model.audio_encoders()]
    try:
        with torch.no_grad():
            cached = model(**text_only, **cache.fetch(keys))
    finally:
        for h in hooks:
            h.remove()
    assert calls == []  # the encoders were skipped
    with torch.no_grad():
        live = model(**batch)
    assert torch.equal(cached.logits, live.logits) and torch.equal(cached.loss, live.loss)

    prompt = processor(text=processor.apply_chat_template(chat("How many beeps?"), add_generation_prompt=True,
                                                          tokenize=False), audio=audios[0], sampling_rate=16000)
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    live_tokens = model.generate(**prompt, **greedy)
    text_prompt = {k: prompt[k] for k in ("input_ids", "attention_mask", "instruction_mask")}
    assert torch.equal(model.generate(**text_prompt, **cache.fetch(keys[:1]), **greedy), live_tokens)


def test_cached_features_train_the_same_gradients(tiny_dir, processor, tmp_path):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir)
    model.config.projector_dropout = 0.0
    model.eval()  # no dropout, so two passes are comparable
    audio = tone(3.0, freq=800)
    cache = AudioFeatureCache(tmp_path, model, processor)
    key, = cache.encode([{"array": audio, "sampling_rate": 16000}])
    batch = batch_for(processor, [audio])
    model(**batch).loss.backward()
    live = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    text_only = {k: batch[k] for k in ("input_ids", "attention_mask", "instruction_mask", "labels")}
    model(**text_only, **cache.fetch([key])).loss.backward()
    cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert live.keys() == cached.keys() and any(n.startswith("model.projector.") for n in live)
    assert all(torch.equal(live[n], cached[n]) for n in live)


def test_hits_misses_keys_and_fingerprint(model, processor, tmp_path):
    cache = AudioFeatureCache(tmp_path, model, processor)
    a = {"array": tone(1.0, freq=300), "sampling_rate": 16000}
    b = {"array": tone(1.0, freq=600), "sampling_rate": 16000}
    assert cache.get(audio_key(a)) is None and (cache.hits, cache.misses) == (0, 1)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.fetch([audio_key(a)])
    keys = cache.encode([a, b, a])  # a duplicate in one call is computed once
    assert keys[0] == keys[2] != keys[1] and (cache.hits, cache.misses) == (1, 4)
    cache.encode([b])
    assert cache.hits == 2 and cache.misses == 4  # already on disk: not recomputed
    features = cache.fetch(keys)
    n, cfg = model.config.num_audio_tokens, model.config
    assert features["whisper_frames"].shape == (3, n, cfg.whisper_config.d_model)
    assert features["htsat_frames"].shape == (3, n, cfg.htsat_config.hidden_size)
    assert features["clap_vector"].shape == (3, cfg.clap_config.hidden_size)
    # The key is the audio, however it arrives: the same samples at the same rate, as an array or as WAV bytes.
    import io

    import soundfile

    wav = io.BytesIO()
    soundfile.write(wav, a["array"], 16000, format="WAV", subtype="FLOAT")
    assert audio_key({"bytes": wav.getvalue()}) == keys[0]
    assert audio_key(a["array"][::2], 8000) != keys[0]
    # Other encoder weights get another fingerprint, so a cache never serves features of different encoders.
    reopened = AudioFeatureCache(tmp_path, fingerprint=cache.fingerprint)
    assert keys[1] in reopened and torch.equal(reopened.fetch(keys[1:2])["clap_vector"], features["clap_vector"][1:2])
    with torch.no_grad():
        clone = {k: v.clone() for k, v in model.state_dict().items()}
        model.model.htsat_encoder.audio_encoder.norm.weight.add_(1.0)
        try:
            assert encoder_fingerprint(model, processor) != cache.fingerprint
        finally:
            model.load_state_dict(clone)
    assert encoder_fingerprint(model, processor) == cache.fingerprint


def test_whisper_padding_switch_is_shared_by_the_cache_and_inference(tiny_dir, model, processor, tmp_path):
    trimmed = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir, whisper_trim_padding=True).eval()
    assert trimmed.config.whisper_trim_padding and not model.config.whisper_trim_padding
    padded_cache = AudioFeatureCache(tmp_path, model, processor)
    trimmed_cache = AudioFeatureCache(tmp_path, trimmed, processor)
    assert padded_cache.fingerprint != trimmed_cache.fingerprint  # one never serves the other's features
    audios = [tone(4.0, freq=500), tone(31.0, freq=900)]  # one window with padding; a full window + a short one
    keys = trimmed_cache.encode([{"array": a, "sampling_rate": 16000} for a in audios])
    mels = processor.extract_audio_features([{"array": a, "sampling_rate": 16000} for a in audios])
    mels = {k: torch.as_tensor(v) for k, v in mels.items()}
    encoded = dict(zip(("whisper_frames", "htsat_frames", "clap_vector"), trimmed.model.encode_audio(**mels)))
    for name, cached in trimmed_cache.fetch(keys).items():
        assert torch.equal(cached, encoded[name]), name
    with torch.no_grad():
        padded = model.model.encode_whisper(mels["whisper_input_features"], mels["whisper_lengths"])
        cut = trimmed.model.encode_whisper(mels["whisper_input_features"], mels["whisper_lengths"])
    frames = model.config.whisper_frames_per_window
    real = mels["whisper_lengths"].tolist()  # [200, 1550] at 50 frames/s
    assert torch.allclose(cut[1], padded[1], atol=1e-5)  # a full window is the same either way
    assert not torch.allclose(cut[0, : real[0]], padded[0, : real[0]], atol=1e-3)  # a padded one is not
    assert cut[0, real[0]:].abs().max() == 0 and cut[2, real[1] - frames:].abs().max() == 0
    prompt = processor(text=processor.apply_chat_template(chat("How many beeps?"), add_generation_prompt=True,
                                                          tokenize=False), audio=audios[0], sampling_rate=16000)
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    text_prompt = {k: prompt[k] for k in ("input_ids", "attention_mask", "instruction_mask")}
    from_cache = trimmed.generate(**text_prompt, **trimmed_cache.fetch(keys[:1]), **greedy)
    assert torch.equal(trimmed.generate(**prompt, **greedy), from_cache)


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte", "empty"])
def test_a_damaged_file_is_detected_and_recomputed_with_a_warning(model, processor, tmp_path, damage, caplog):
    audio = {"array": tone(1.5, freq=500), "sampling_rate": 16000}
    cache = AudioFeatureCache(tmp_path, model, processor)
    key, = cache.encode([audio])
    good = cache.fetch([key])
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":  # killed while writing, or a full disk
        data = data[: len(data) // 2]
    elif damage == "flip-a-byte":  # same size and a valid header, wrong numbers
        data[-5] ^= 0xFF
    else:
        data = b""
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="tinygiant.training.feature_cache"):
        assert cache.get(key) is None  # a miss, never wrong numbers
    assert f"feature cache file {path} is corrupt" in caplog.text and not path.exists()
    cache.encode([audio])  # recomputed and stored again
    assert all(torch.equal(cache.fetch([key])[name], good[name]) for name in good)


def test_collator_recomputes_a_damaged_cache_file(model, processor, tmp_path, caplog):
    from tinygiant.training.data import TinyGiantCollator

    audio = {"array": tone(1.5, freq=700), "sampling_rate": 16000}
    cache = AudioFeatureCache(tmp_path, model, processor)
    key, = cache.encode([audio])
    good = cache.fetch([key])
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:100])
    collator = TinyGiantCollator(processor, feature_cache=cache)
    with caplog.at_level("WARNING", logger="tinygiant.training.feature_cache"):
        batch = collator([{"user": "<audio> How many beeps?", "assistant": "Three.", "audio": audio}])
    assert "is corrupt" in caplog.text
    assert int(batch["num_feature_cache_misses"]) == 1 and "whisper_input_features" not in batch
    assert all(torch.equal(batch[name][0], good[name][0]) for name in good)
    assert all(torch.equal(cache.fetch([key])[name], good[name]) for name in good)  # stored again
