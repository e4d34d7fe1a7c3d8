"""`tinygiant eval mmar --server URL`: MMAR through an OpenAI-compatible audio chat endpoint, here a scripted one on
127.0.0.1 (the TinyGiant vLLM server is the other endpoint, in `tests/test_vllm.py`; a peer failing as real servers do
is in `tests/test_eval_peer.py`)."""

import base64
import io
import json
import time

import soundfile
from judge_server import ScriptedJudge
from test_mmar_generation import fixture_dir  # noqa: F401 (a fixture)

import tinygiant.eval.mmar
from parsing_tinygiant import format_question


class ScriptedAudioModel(ScriptedJudge):
    """Plays an audio LM: requests are matched by their question (the user text's first line); a scripted entry is a
    `(reasoning, content)` pair, or "429", "500", "timeout" as for the judge. The reasoning comes back in `reasoning`
    (vLLM 0.32) for even-numbered items and in `reasoning_content` (older servers) for the others."""

    def respond(self, body):
        user = body["messages"][-1]["content"]
        question = next(part["text"] for part in user if part["type"] == "text").splitlines()[0]
        with self.lock:
            self.calls[question] += 1
            self.requests.append(body)
            entries = self.script.get(question)
            entry = entries.pop(0) if entries else self.default
        if isinstance(entry, str):
            return self.reply(entry, body, "", question, [])
        reasoning, content = entry
        field = "reasoning" if int(question.split()[1].rstrip("?")) % 2 == 0 else "reasoning_content"
        return 200, {}, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                         "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": content, field: reasoning}}]}


def meta_items(folder):
    return [json.loads(line) for line in (folder / "MMAR-meta.jsonl").read_text().splitlines()]


def run(server, folder, *extra):
    return tinygiant.eval.mmar.main(["--server", server.base_url, "--server-model", "peer", "--meta",
                                     str(folder / "MMAR-meta.jsonl"), "--output-dir", str(folder / "eval"),
                                     "--concurrency", "3", *extra])


def test_server_predictions_prompt_retries_and_reasoning(fixture_dir):  # noqa: F811
    items = meta_items(fixture_dir)
    script = {item["question"]: ["429", "500", ("I hear it.", f"The answer is {item['answer']}.")] for item in items}
    with ScriptedAudioModel(script) as server:
        scores = run(server, fixture_dir)
    lines = (fixture_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert set(records) == {item["id"] for item in items}
    assert "missing audio file" in records["item4"]["error"]  # never sent
    for item in items:
        if item["id"] == "item4":
            continue
        assert records[item["id"]] == {"id": item["id"], "thinking_prediction": "I hear it.",
                                       "answer_prediction": item["answer"]}
        assert server.calls[item["question"]] == 3  # a 429 and a 500, retried with backoff
    assert scores["overall"]["correct"] == 8 and scores["n_errors"] == 1
    # The in-process harness's prompt, with the clip's bytes as an `input_audio` part; no system message (the served
    # model's own applies).
    body = next(b for b in server.requests if b["messages"][-1]["content"][-1]["text"].startswith(items[1]["question"]))
    assert [m["role"] for m in body["messages"]] == ["user"]
    audio, text = body["messages"][-1]["content"]
    assert text == {"type": "text", "text": format_question(items[1]["question"], items[1]["choices"])}
    assert audio["input_audio"]["format"] == "wav"
    assert soundfile.read(io.BytesIO(base64.b64decode(audio["input_audio"]["data"])))[0].size > 0
    assert body["temperature"] == 0.0 and body["max_tokens"] == 1024


def test_an_item_the_server_keeps_failing_is_its_error_and_a_rerun_asks_it_again(fixture_dir):  # noqa: F811
    items = meta_items(fixture_dir)
    answer = {item["question"]: ("", f"The answer is {item['answer']}.") for item in items}
    broken = {q: [reply] for q, reply in answer.items()}
    broken[items[5]["question"]] = ["500"] * 20  # item5 fails past the client's retries
    with ScriptedAudioModel(broken) as server:
        scores = run(server, fixture_dir, "--batch-size", "3", "--concurrency", "1")
    lines = (fixture_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert list(records) == [item["id"] for item in items]  # every other answer is written
    assert "clip_5.wav" in records["item5"]["error"] and "server error" in records["item5"]["error"]
    assert scores["overall"]["correct"] == 7 and scores["n_errors"] == 2
    with ScriptedAudioModel({q: [reply] for q, reply in answer.items()}) as server:
        scores = run(server, fixture_dir)
        asked = set(server.calls)
    assert asked == {items[5]["question"]}  # nothing asked twice; the missing audio is not asked either
    assert scores["overall"]["correct"] == 8
