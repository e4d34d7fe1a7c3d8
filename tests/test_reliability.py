"""Reliability: a save killed halfway never leaves a folder that loads half a model; one pipeline called from two
threads serialises its generation; an MMAR evaluation killed with SIGKILL mid-batch resumes to the same scores."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import soundfile
from helpers import talkative, tone

import tinygiant.hub.publish
from modeling_tinygiant import TinyGiantForConditionalGeneration
from pipeline_tinygiant import TinyGiantAudioReasoningPipeline
from tinygiant.eval import mmar
from tinygiant.hub.publish import missing_files, save_checkpoint


@pytest.fixture(scope="module")
def chatty(tiny_dir):
    return talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "into-an-existing-folder"])
def test_a_save_killed_halfway_leaves_nothing_loadable_then_a_save_completes(chatty, processor, tmp_path,
                                                                            monkeypatch, existing):
    from transformers import AutoModel, AutoProcessor

    out = tmp_path / "model"
    if existing:
        out.mkdir()
        (out / "trainer_state.json").write_text("{}")  # what train_sft.py keeps beside the model
    moves = []
    real_replace, real_rename = os.replace, os.rename

    def dies_after_three(src, dst):
        if len(moves) == 3:
            raise KeyboardInterrupt("killed")  # as a signal would stop the save
        moves.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(tinygiant.hub.publish.os, "replace", dies_after_three)
    monkeypatch.setattr(tinygiant.hub.publish.os, "rename", lambda src, dst: dies_after_three(src, dst)
                        if len(moves) == 3 else real_rename(src, dst))
    if not existing:
        moves.extend([None] * 3)  # a new folder appears by one rename: kill it there
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(chatty, processor, out)
    monkeypatch.undo()
    if existing:  # three files moved, but the two that make the folder loadable come last
        assert not (out / "config.json").exists() and not (out / "processor_config.json").exists()
        with pytest.raises((OSError, ValueError), match="config.json"):
            AutoModel.from_pretrained(out, trust_remote_code=True)
        with pytest.raises(OSError):
            AutoProcessor.from_pretrained(out, trust_remote_code=True)
    else:
        assert not out.exists()
    save_checkpoint(chatty, processor, out)  # the next save cleans the leftover staging folder and completes
    assert missing_files(out) == [] and not list(tmp_path.glob(".model.partial-*"))
    assert AutoModel.from_pretrained(out, trust_remote_code=True).num_parameters() == chatty.num_parameters()
    assert not existing or (out / "trainer_state.json").exists()


def test_two_threads_on_one_pipeline_serialise_and_get_their_own_answers(chatty, processor):
    pipe = TinyGiantAudioReasoningPipeline(model=chatty, processor=processor)
    asks = [dict(audio=tone(1.0, freq=300 + 200 * i), question=f"Question {i}?") for i in range(4)]
    greedy = {"max_new_tokens": 12, "do_sample": False, "sampling_rate": 16000}
    expected = [pipe(a["audio"], question=a["question"], **greedy) for a in asks]
    assert len({e["text"] for e in expected}) > 1  # different questions, different answers

    inside, most = [0], [0]
    generate = chatty.generate

    def counting_generate(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # give the other thread every chance to enter too
        try:
            return generate(*args, **kwargs)
        finally:
            inside[0] -= 1

    chatty.generate = counting_generate
    results, errors = {}, []

    def worker(indices):
        try:
            for i in indices * 2:
                results.setdefault(i, []).append(pipe(asks[i]["audio"], question=asks[i]["question"], **greedy))
        except Exception as error:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=worker, args=([0, 1],)), threading.Thread(target=worker, args=([2, 3],))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del chatty.generate
    assert errors == [] and most[0] == 1
    assert all(results[i] == [expected[i]] * 2 for i in range(4))


def test_evaluation_killed_mid_batch_resumes_to_the_same_scores(chatty, processor, tmp_path):
    model_dir = save_checkpoint(chatty, processor, tmp_path / "model")
    (tmp_path / "audio").mkdir()
    items = []
    for i in range(6):
        soundfile.write(tmp_path / "audio" / f"c{i}.wav", tone(0.5 + i / 8, 16000, 250.0 * (i + 1)), 16000)
        choices = ["a bird", "a dog", "a car"]
        items.append({"id": f"c{i}", "audio_path": f"./audio/c{i}.wav", "question": f"What is heard in clip {i}?",
                      "choices": choices, "answer": choices[i % 3], "modality": mmar.MODALITIES[i % 7],
                      "category": "Signal Layer", "sub-category": "Anomaly Detection"})
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(x) + "\n" for x in items))
    args = ["--model", str(model_dir), "--meta", str(meta), "--batch-size", "2", "--max-new-tokens", "16"]

    whole = mmar.main([*args, "--output-dir", str(tmp_path / "whole")])
    killed = tmp_path / "killed"
    predictions = killed / "predictions.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "tinygiant.eval.mmar", *args, "--output-dir", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 300
    while not (predictions.is_file() and predictions.read_text().count("\n") >= 2):  # the first batch is written
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # the second batch is being generated
    process.wait()
    done = predictions.read_text().count("\n")
    assert 2 <= done < 6
    with open(predictions, "a") as f:  # and as if the kill had cut a line in half
        f.write('{"id": "c5", "thinking_pre')
    resumed = mmar.main([*args, "--output-dir", str(killed)])

    def by_id(folder):
        return sorted(json.loads(line)["id"] for line in (folder / "predictions.jsonl").read_text().splitlines())

    assert by_id(killed) == by_id(tmp_path / "whole") == [f"c{i}" for i in range(6)]
    lines = {json.loads(x)["id"]: json.loads(x) for x in predictions.read_text().splitlines()}
    reference = {json.loads(x)["id"]: json.loads(x)
                 for x in (tmp_path / "whole" / "predictions.jsonl").read_text().splitlines()}
    assert lines == reference
    for key in ("overall", "by_modality", "by_layer", "by_sub_category", "official"):
        assert resumed[key] == whole[key]
    assert json.loads((killed / "scores.json").read_text())["overall"] == whole["overall"]
