"""Tests for the offline synthetic audio-reasoning dataset (tinygiant.demo.synthetic).

They pass with and without espeak-ng: without it the speech task is dropped and the summary says so.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import tinygiant.demo.synthetic as syn
from parsing_tinygiant import format_question, parse_response

EVAL_KEYS = ["id", "question", "choices", "answer", "task", "audio_path"]
ASSISTANT = re.compile(
    r"<THINK>\n<PLANNING>\n([^\n<]+)</PLANNING>\n<CAPTION>\n([^\n<]+)</CAPTION>\n"
    r"<REASONING>\n([^\n<]+)</REASONING>\n<SUMMARY>\n([^\n<]+)</SUMMARY>\n</THINK>\n"
    r"<RESPONSE>\n([^\n<]+)</RESPONSE>"
)
SPEECH = syn.speech_available()
N_TRAIN, N_HELDOUT = 48, 24


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = syn.make_synthetic_dataset(str(out), n_train=N_TRAIN, n_heldout=N_HELDOUT, seed=0)
    rows = {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "heldout")}
    return out, summary, rows


def all_rows(rows):
    return rows["train"] + rows["heldout"]


def load(out, row):
    wave, sr = sf.read(out / row["audio"], dtype="float64")
    return wave, sr


# ----------------------------------------------------------------------------- signal helpers


def segments(wave, sr, threshold=0.03):
    """(start, end) sample ranges where the 10 ms RMS envelope is above `threshold`."""
    n = int(0.01 * sr)
    frames = wave[: len(wave) // n * n].reshape(-1, n)
    active = np.sqrt((frames ** 2).mean(axis=1)) > threshold
    edges = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    return [(s * n, e * n) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def spectrum(wave, sr):
    power = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    return np.fft.rfftfreq(len(wave), 1 / sr), power


def dominant_frequency(wave, sr):
    freqs, power = spectrum(wave, sr)
    return freqs[np.argmax(power)]


def high_frequency_share(wave, sr):
    """Share of the energy above 4 kHz: large for broadband noise, tiny for a tone."""
    freqs, power = spectrum(wave, sr)
    return power[freqs > 4000].sum() / power.sum()


def spectral_peaks(wave, sr):
    """Number of local maxima of the magnitude spectrum above a fifth of the largest one."""
    _, power = spectrum(wave, sr)
    mag = np.sqrt(power)
    peak = (mag[1:-1] > mag[:-2]) & (mag[1:-1] >= mag[2:]) & (mag[1:-1] > 0.2 * mag.max())
    return int(peak.sum())


def tonal_share(wave, sr):
    """Share of the energy within 3 % of the strongest frequency: about 1 for a pure tone."""
    freqs, power = spectrum(wave, sr)
    f0 = freqs[np.argmax(power)]
    return power[np.abs(freqs - f0) <= 0.03 * f0].sum() / power.sum()


def official_string_match(answer, prediction, choices):
    """MMAU's and MMAR's official accuracy rule: all answer tokens, no distractor token."""
    def tokens(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    answer_tokens, prediction_tokens = tokens(answer), tokens(prediction)
    if not prediction_tokens:
        return False
    wrong = set()
    for choice in choices:
        if tokens(choice) != answer_tokens:
            wrong |= tokens(choice) - answer_tokens
    return answer_tokens <= prediction_tokens and not (wrong & prediction_tokens)


# ----------------------------------------------------------------------------- tests


def test_same_seed_gives_identical_files(dataset, tmp_path):
    out, _, rows = dataset
    syn.make_synthetic_dataset(str(tmp_path), n_train=N_TRAIN, n_heldout=N_HELDOUT, seed=0)
    names = ["train.jsonl", "heldout.jsonl", "eval-meta.jsonl", "summary.json"]
    names += [r["audio"] for r in all_rows(rows)]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    other = tmp_path / "other"
    syn.make_synthetic_dataset(str(other), n_train=8, n_heldout=4, seed=1)
    first = rows["train"][0]["audio"]
    assert (out / first).read_bytes() != (other / first).read_bytes()


def test_tasks_and_summary(dataset):
    out, summary, rows = dataset
    expected = ["count_beeps", "higher_tone", "what_came_first", "chord_or_note", "is_there_speech"]
    assert list(syn.TASKS) == expected
    if SPEECH:
        assert summary["tasks"] == expected and summary["dropped_tasks"] == {}
    else:
        assert summary["tasks"] == expected[:4]
        assert "espeak-ng" in summary["dropped_tasks"]["is_there_speech"]
    assert {r["task"] for r in all_rows(rows)} == set(summary["tasks"])
    for split, n in [("train", N_TRAIN), ("heldout", N_HELDOUT)]:
        assert len(rows[split]) == n
        assert sum(c["multiple_choice"] + c["open"] for c in summary["counts"][split].values()) == n
        assert sum(sum(a.values()) for a in summary["answers"][split].values()) == n
    with open(out / "summary.json", encoding="utf-8") as f:
        assert json.load(f) == {k: v for k, v in summary.items() if k != "paths"}
    for path in summary["paths"].values():
        assert os.path.exists(path)
    # Chance accuracy of the held-out multiple-choice rows: 1 / options per task, and their mean overall.
    chance = summary["heldout_chance_accuracy"]
    scored = [r for r in rows["heldout"] if r["choices"]]
    for task, value in chance["per_task"].items():
        assert value == pytest.approx(1 / len(syn.TASK_OPTIONS[task]))
    assert chance["overall"] == pytest.approx(np.mean([1 / len(r["choices"]) for r in scored]))
    assert chance["n_multiple_choice"] == len(scored)


def test_answers_are_balanced(dataset):
    _, _, rows = dataset
    for split in ("train", "heldout"):
        for task in {r["task"] for r in rows[split]}:
            for multiple_choice in (True, False):
                picked = [r for r in rows[split] if r["task"] == task]
                counts = Counter(r["answer"] for r in picked if (r["choices"] is not None) == multiple_choice)
                options = syn.TASK_OPTIONS[task]
                assert set(counts) <= set(options)
                spread = [counts.get(o, 0) for o in options]
                assert max(spread) - min(spread) <= 1, (split, task, multiple_choice, counts)
    # About a quarter of the rows are open questions.
    n_open = sum(r["choices"] is None for r in rows["train"])
    assert 0.2 <= n_open / N_TRAIN <= 0.3


def test_user_and_assistant_markup(dataset):
    _, _, rows = dataset
    positions = Counter()
    for row in all_rows(rows):
        assert row["user"].startswith("<audio>")
        assert row["user"] == "<audio>" + format_question(row["question"], row["choices"])
        match = ASSISTANT.fullmatch(row["assistant"])
        assert match, row["assistant"]
        for section in match.groups():  # one short sentence each
            assert section.endswith(".") and ". " not in section and len(section) < 120, section
        response = match.group(5)
        assert row["answer"].lower() in response.lower()
        if row["choices"] is not None:
            assert sorted(row["choices"]) == sorted(syn.TASK_OPTIONS[row["task"]])
            index = row["choices"].index(row["answer"])
            positions[index] += 1
            assert response == f"The answer is {row['answer']}."
            # The project's own parser and MMAR's scorer both read the response as the right option.
            assert parse_response(row["assistant"], row["choices"])["choice"] == row["answer"]
            assert official_string_match(row["answer"], response, row["choices"])
    assert len(positions) >= 2  # options really are shuffled


def test_audio_files(dataset):
    out, _, rows = dataset
    for row in all_rows(rows):
        info = sf.info(str(out / row["audio"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (44100, 1, "PCM_16", "WAV")
        assert 1.5 <= info.frames / info.samplerate <= 4.0
        wave, _ = load(out, row)
        assert np.abs(wave).max() <= 1.0
        quietest = min(np.sqrt(np.mean(wave[i:i + 441] ** 2)) for i in range(0, len(wave) - 441, 441))
        assert quietest > 1e-4  # background noise, never digital silence


def test_answer_is_in_the_audio(dataset):
    out, _, rows = dataset
    checked = Counter()
    for row in all_rows(rows):
        wave, sr = load(out, row)
        half = len(wave) // 2
        task, answer = row["task"], row["answer"]
        if task == "count_beeps":
            assert len(segments(wave, sr)) == syn.NUMBERS.index(answer) + 1, row["id"]
        elif task == "higher_tone":
            first, second = dominant_frequency(wave[:half], sr), dominant_frequency(wave[half:], sr)
            assert (second > first) == (answer == "the second"), row["id"]
        elif task == "what_came_first":
            first, second = high_frequency_share(wave[:half], sr), high_frequency_share(wave[half:], sr)
            assert (second > first) == (answer == "the tone"), row["id"]  # the noise is where the hiss is
        elif task == "chord_or_note":
            (start, end), = segments(wave, sr)
            assert spectral_peaks(wave[start:end], sr) == (3 if answer == "a chord" else 1), row["id"]
        elif task == "is_there_speech":
            shares = [tonal_share(wave[s:e], sr) for s, e in segments(wave, sr) if e - s >= 0.05 * sr]
            if answer == "no":
                assert min(shares) > 0.9, row["id"]  # only pure tones
            else:
                assert min(shares) < 0.6, row["id"]  # something that is not a pure tone: the voice
        checked[task] += 1
    assert set(checked) == {r["task"] for r in all_rows(rows)}


def test_count_clips_share_one_length(dataset):
    # After pooling, the model sees how much of the clip beeps; only with one length does that share fix the count.
    out, _, rows = dataset
    lengths = {round(sf.info(str(out / r["audio"])).duration, 3) for r in all_rows(rows) if r["task"] == "count_beeps"}
    assert lengths == {syn.COUNT_SECONDS}


def test_eval_meta(dataset):
    """The held-out multiple-choice rows are the synthetic benchmark's items, with its own fields (no MMAR labels)."""
    from tinygiant.eval.synthetic import load_meta

    out, summary, rows = dataset
    meta = load_meta(out / "eval-meta.jsonl")
    multiple_choice = [r for r in rows["heldout"] if r["choices"] is not None]
    assert [m["id"] for m in meta] == [r["id"] for r in multiple_choice]
    for item, row in zip(meta, multiple_choice):
        assert list(item) == EVAL_KEYS
        assert item["audio_path"] == f"audio/{item['id']}.wav"
        assert (out / item["audio_path"]).is_file()
        assert item["task"] in summary["tasks"]
        assert item["answer"] in item["choices"] and 2 <= len(item["choices"]) <= 6
        for key in ("question", "choices", "answer", "task"):
            assert item[key] == row[key]
    assert not any("modality" in row or "sub-category" in row for row in all_rows(rows))


def test_train_and_heldout_are_disjoint(dataset):
    out, _, rows = dataset
    ids = [r["id"] for r in all_rows(rows)]
    assert len(set(ids)) == len(ids)

    def digests(split):
        return {hashlib.sha256((out / r["audio"]).read_bytes()).hexdigest() for r in rows[split]}

    train, heldout = digests("train"), digests("heldout")
    assert len(train) == N_TRAIN and len(heldout) == N_HELDOUT
    assert not train & heldout


def test_speech_task_is_dropped_without_espeak(monkeypatch, tmp_path):
    monkeypatch.setattr(syn.shutil, "which", lambda *args, **kwargs: None)
    summary = syn.make_synthetic_dataset(str(tmp_path), n_train=8, n_heldout=4, seed=0)
    assert "is_there_speech" not in summary["tasks"]
    assert "espeak-ng" in summary["dropped_tasks"]["is_there_speech"]
    assert all(r["task"] != "is_there_speech" for r in read_jsonl(tmp_path / "train.jsonl"))
    assert "is_there_speech" not in syn.available_tasks()
    with pytest.raises(RuntimeError):
        syn.generate_clip("is_there_speech", seed=0)


def test_generate_clip_and_task_functions():
    for task in syn.available_tasks():
        clip = syn.generate_clip(task, seed=3)
        assert isinstance(clip, syn.Clip) and clip.task == task
        assert clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1
        assert clip.sampling_rate == 44100 and clip.answer in clip.choices
        assert set(clip.sections) == {"PLANNING", "CAPTION", "REASONING", "SUMMARY", "RESPONSE"}
        assert np.array_equal(clip.waveform, syn.generate_clip(task, seed=3).waveform)
        open_clip = syn.generate_clip(task, seed=3, multiple_choice=False)
        assert open_clip.choices is None
        assert open_clip.answer.lower() in open_clip.sections["RESPONSE"].lower()
        # The generators take any sampling rate, as TASKS promises.
        other = syn.TASKS[task](np.random.default_rng(0), 16000)
        assert other.sampling_rate == 16000 and 1.5 <= len(other.waveform) / 16000 <= 4.0
        row = syn.to_cota_row(clip, "demo", "audio/demo.wav")
        assert row["audio"] == "audio/demo.wav" and row["task"] == clip.task
    assert syn.generate_clip(seed=5).task in syn.available_tasks()
    with pytest.raises(ValueError):
        syn.generate_clip("no_such_task")


def test_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tinygiant.demo.synthetic", str(tmp_path),
         "--n-train", "4", "--n-heldout", "4", "--seed", "2"],
        capture_output=True, text=True, check=True,
    )
    summary = json.loads(result.stdout)
    assert summary["seed"] == 2 and len(read_jsonl(tmp_path / "train.jsonl")) == 4


# ----------------------------------------------------------------------------- scenes: one clip, five questions

N_SCENE_TRAIN, N_SCENE_HELDOUT = 16, 8


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    summary = syn.make_scene_dataset(str(out), n_train=N_SCENE_TRAIN, n_heldout=N_SCENE_HELDOUT, seed=0)
    rows = {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "heldout")}
    return out, summary, rows


def band_envelope(wave, sr, low, high):
    """Energy between `low` and `high` Hz per 10 ms frame."""
    n = int(0.01 * sr)
    frames = wave[: len(wave) // n * n].reshape(-1, n)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    power = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2
    return power[:, (freqs >= low) & (freqs <= high)].sum(axis=1)


def runs_above(envelope, fraction=0.2):
    active = envelope > fraction * envelope.max()
    edges = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_scene_clips_are_asked_every_question(scenes):
    _, summary, rows = scenes
    assert summary["tasks"] == syn.scene_tasks()
    assert syn.scene_tasks() == (syn.SCENE_TASKS if SPEECH else [t for t in syn.SCENE_TASKS if t != "scene_speech"])
    for split, n in [("train", N_SCENE_TRAIN), ("heldout", N_SCENE_HELDOUT)]:
        by_clip = {}
        for row in rows[split]:
            by_clip.setdefault(row["audio"], []).append(row["task"])
            assert row["choices"] is not None and row["answer"] in row["choices"]
            assert sorted(row["choices"]) == sorted(syn.TASK_OPTIONS[row["task"]])
            assert ASSISTANT.fullmatch(row["assistant"]) and row["user"].startswith("<audio>")
            assert parse_response(row["assistant"], row["choices"])["choice"] == row["answer"]
        assert len(by_clip) == n and all(sorted(t) == sorted(summary["tasks"]) for t in by_clip.values())
    meta = read_jsonl(Path(summary["paths"]["eval_meta"]))
    assert [m["id"] for m in meta] == [r["id"] for r in rows["heldout"]]


def test_scene_answers_are_balanced_and_independent(scenes):
    _, _, rows = scenes
    for split in ("train", "heldout"):
        for task in {r["task"] for r in rows[split]}:
            counts = Counter(r["answer"] for r in rows[split] if r["task"] == task)
            spread = [counts.get(o, 0) for o in syn.TASK_OPTIONS[task]]
            assert max(spread) - min(spread) <= 1, (split, task, counts)
    # No question's answer gives another's away: over many planned clips, every pair of answers occurs.
    plan = syn._scene_plan(syn.SCENE_TASKS, 256, np.random.default_rng(0))
    for a in syn.SCENE_TASKS:
        for b in syn.SCENE_TASKS:
            if a < b:
                pairs = Counter((p[a], p[b]) for p in plan)
                assert len(pairs) == len(syn.TASK_OPTIONS[a]) * len(syn.TASK_OPTIONS[b]), (a, b)


def test_scene_answers_are_in_the_audio(scenes):
    out, _, rows = scenes
    checked = Counter()
    for row in rows["train"] + rows["heldout"]:
        wave, sr = load(out, row)
        assert len(wave) == syn.SCENE_SECONDS * sr
        task, answer = row["task"], row["answer"]
        block = int(syn.SCENE_BLOCK * sr)
        beeps = runs_above(band_envelope(wave, sr, 2700, 3300))
        tones = runs_above(band_envelope(wave, sr, 200, 2100)[: 2 * block // int(0.01 * sr)])
        if task == "scene_count":
            assert len(beeps) == syn.NUMBERS.index(answer) + 1, row["id"]
        elif task == "scene_order":
            assert (beeps[0][0] < tones[0][0]) == (answer == "the beeps"), row["id"]
        elif task == "scene_higher":
            (a0, a1), (b0, b1) = tones[0], tones[-1]
            n = int(0.01 * sr)
            first, second = (dominant_frequency(wave[s * n:e * n], sr) for s, e in [(a0, a1), (b0, b1)])
            assert (second > first) == (answer == "the second"), row["id"]
        elif task == "scene_speech":
            tail = wave[2 * block:]
            n = int(0.05 * sr)
            loudness = np.sqrt((tail[: len(tail) // n * n].reshape(-1, n) ** 2).mean(axis=1)).max()
            assert (loudness > 0.08) == (answer == "yes"), (row["id"], loudness)  # the background stays below 0.04
        elif task == "scene_background":
            freqs, power = spectrum(wave, sr)
            share = power[freqs > 5000].sum() / power.sum()  # the foreground sounds sit below 3.5 kHz
            assert (share > 0.01) == (answer == "a high hiss"), (row["id"], share)
        checked[task] += 1
    assert set(checked) == set(syn.scene_tasks())


def test_scene_train_and_heldout_clips_are_disjoint(scenes):
    out, _, rows = scenes

    def digests(split):
        return {hashlib.sha256((out / r["audio"]).read_bytes()).hexdigest() for r in rows[split]}

    train, heldout = digests("train"), digests("heldout")
    assert len(train) == N_SCENE_TRAIN and len(heldout) == N_SCENE_HELDOUT
    assert not train & heldout
