"""benchmarks/scene_probes.py's probe of trained runs: what each run's projector hands the LLM, per question."""

import sys
from pathlib import Path

import numpy as np

import tinygiant.demo.synthetic as syn
from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scene_probes import audio_embeddings, encode_clips, probe


def test_audio_embeddings_follow_the_question_only_with_the_intent_query(tmp_path):
    data = tmp_path / "data"
    syn.make_scene_dataset(data, n_train=3, n_heldout=2, seed=0)
    full, processor = write_tiny_checkpoint(tmp_path / "full", num_audio_tokens=4)
    no_iq, _ = write_tiny_checkpoint(tmp_path / "no-iq", num_audio_tokens=4, use_intent_query=False)
    _, rows, index, encoded = encode_clips(full, processor, data, "train")
    count = next(r for r in rows if r["task"] == "scene_count")
    background = next(r for r in rows if r["task"] == "scene_background")
    width = 4 * full.config.text_config.hidden_size
    full.eval(), no_iq.eval()
    with_iq = [audio_embeddings(full, processor, data, row, encoded) for row in (count, background)]
    without = [audio_embeddings(no_iq, processor, data, row, encoded) for row in (count, background)]
    assert with_iq[0].shape == (len(index), width)
    assert not np.allclose(with_iq[0][0], with_iq[0][1])  # two clips, two embeddings
    alone = audio_embeddings(full, processor, data, count, encoded[1:2])[0]
    np.testing.assert_allclose(with_iq[0][1], alone, rtol=1e-4, atol=1e-5)  # the batch keeps each clip's own
    assert not np.allclose(with_iq[0], with_iq[1])  # another question, another intent query
    np.testing.assert_allclose(without[0], without[1], rtol=1e-5, atol=1e-6)  # no intent query: the question is unseen


def test_probe_reads_a_separable_label_and_not_noise():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), rng.integers(0, 2, 80)
    x[:, 0] += 4 * y  # one feature carries the label
    assert probe(x[:60], y[:60], x[60:], y[60:], 2) == 100.0
    noise = rng.normal(size=(80, 6))
    assert probe(noise[:60], y[:60], noise[60:], y[60:], 2) < 80.0

