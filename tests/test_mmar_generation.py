"""The MMAR harness end to end on a generated MMAR-format fixture: generation, resume, missing audio, scoring."""

import json

import pytest
import soundfile
from helpers import tone

import tinygiant.eval.mmar
from tinygiant.eval.mmar import MODALITIES, load_meta
from tinygiant.eval.runner import predict, resume

SUB_CATEGORIES = [("Perception Layer", "Counting and Statistics"), ("Signal Layer", "Acoustic Quality Analysis"),
                  ("Semantic Layer", "Content Analysis"), ("Cultural Layer", "Imagination")]


@pytest.fixture
def fixture_dir(tmp_path):
    """Nine items over all 7 modalities and 4 layers, 2-6 choices, audio under ./audio/; one audio file is missing."""
    (tmp_path / "audio").mkdir()
    items = []
    for i in range(9):
        layer, sub = SUB_CATEGORIES[i % 4]
        choices = [f"option {w}" for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")[: 2 + i % 5]]
        item = {"id": f"item{i}", "audio_path": f"./audio/clip_{i}.wav", "question": f"Question {i}?",
                "choices": choices, "answer": choices[i % len(choices)], "modality": MODALITIES[i % 7],
                "category": layer, "sub-category": sub}
        items.append(item)
        if i != 4:
            soundfile.write(tmp_path / "audio" / f"clip_{i}.wav", tone(1.0 + i / 4, 22050, 200.0 * (i + 1)), 22050)
    (tmp_path / "MMAR-meta.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return tmp_path


def test_generation_scores_reports_and_score_only_agree(tiny_dir, fixture_dir, capsys):
    out = fixture_dir / "eval"
    scores = tinygiant.eval.mmar.main(["--model", str(tiny_dir), "--meta", str(fixture_dir / "MMAR-meta.jsonl"),
                                 "--output-dir", str(out), "--batch-size", "3", "--max-new-tokens", "3"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"item{i}" for i in range(9)]
    missing = next(r for r in records if r["id"] == "item4")
    assert "missing audio file" in missing["error"] and "clip_4.wav" in missing["error"]
    assert all(set(r) == {"id", "thinking_prediction", "answer_prediction"} for r in records if r["id"] != "item4")
    for name in ("scores.json", "report.md", "accuracy_by_modality.png"):
        assert (out / name).stat().st_size > 0
    assert scores["n_items"] == 9 and scores["n_errors"] == 1
    assert sum(cell["total"] for cell in scores["by_modality"].values()) == 9
    rescored = tinygiant.eval.mmar.main(["--meta", str(fixture_dir / "MMAR-meta.jsonl"), "--score-only",
                                   str(out / "predictions.jsonl"), "--output-dir", str(fixture_dir / "again")])
    for key in ("overall", "by_modality", "by_layer", "by_sub_category", "official"):
        assert rescored[key] == scores[key]
    assert "MMAR accuracy" in capsys.readouterr().out


class CountingPipeline:
    """Stands in for pipeline("audio-reasoning"): answers the first choice and records what it was asked."""

    def __init__(self):
        self.asked = []

    def __call__(self, inputs, batch_size=1, **generate_kwargs):
        single = isinstance(inputs, dict)
        inputs = [inputs] if single else inputs
        self.asked += [x["question"] for x in inputs]
        outputs = [{"text": "", "thinking": "t", "answer": x["choices"][0], "choice": x["choices"][0]} for x in inputs]
        return outputs[0] if single else outputs


def test_interrupted_generation_resumes_without_redoing_items(fixture_dir):
    meta = load_meta(fixture_dir / "MMAR-meta.jsonl")
    path = fixture_dir / "predictions.jsonl"
    first = CountingPipeline()
    predict(meta, fixture_dir, first, path, batch_size=2, limit=5)
    assert len(first.asked) == 4  # 5 items, one of them without audio
    # A crash in the middle of a write leaves a partial last line.
    path.write_text(path.read_text() + '{"id": "item5", "thinking_pred')
    assert resume(path) == {f"item{i}" for i in range(5)}
    second = CountingPipeline()
    predict(meta, fixture_dir, second, path, batch_size=2)
    assert second.asked == [f"Question {i}?" for i in range(5, 9)]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(item["id"] for item in meta)


def test_an_undecodable_audio_is_an_error_record_and_the_batch_goes_on(tiny_dir, fixture_dir):
    (fixture_dir / "audio" / "clip_1.wav").write_bytes(b"RIFF not audio")
    meta = load_meta(fixture_dir / "MMAR-meta.jsonl")[:3]
    path = fixture_dir / "predictions.jsonl"
    predict(meta, fixture_dir, str(tiny_dir), path, batch_size=3, generate_kwargs={"max_new_tokens": 2})
    records = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert "cannot decode" in records["item1"]["error"]
    assert "answer_prediction" in records["item0"] and "answer_prediction" in records["item2"]


def test_meta_from_the_hub_copy_leaves_out_invalid_items_with_a_warning(fixture_dir, capsys):
    items = [json.loads(line) for line in (fixture_dir / "MMAR-meta.jsonl").read_text().splitlines()]
    items[2]["answer"] = "not an option"
    (fixture_dir / "old.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match="item2: answer 'not an option' is not one of the choices"):
        load_meta(fixture_dir / "old.json")
    kept = load_meta(fixture_dir / "old.json", skip_invalid=True)
    assert [item["id"] for item in kept] == [f"item{i}" for i in range(9) if i != 2]
    assert "leaving out 1 invalid item" in capsys.readouterr().out
