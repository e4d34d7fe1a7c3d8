"""The runner against a scripted peer on 127.0.0.1 that fails as real servers do (issue: a peer scored through
`tinygiant eval NAME --server`): one clip's repeated 500, a run-wide 400, then the fixed server; the request's system
prompt and greedy fields; a reply all in `reasoning`; replies cut at the length limit; a URL without /v1;
client-side resampling."""

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile
from helpers import tone

from parsing_tinygiant import NO_DEFAULT_SYSTEM_PROMPT
from tinygiant import cli
from tinygiant.eval import mmau
from tinygiant.eval.runner import RunWideFailure

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 6


class ScriptedPeer:
    """An OpenAI-compatible audio chat server under /v1 (anything else: 404). `reply(body, question)` gives
    `(status, payload)`; the default answers every question with its first choice's text. `calls` counts requests per
    question (the user text's first line), `requests` keeps their bodies."""

    def __init__(self, reply=None, model="peer-model"):
        self.reply = reply or self.answer_first
        self.model, self.calls, self.requests, self.lock = model, Counter(), [], threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 500:
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self.send(404, {"error": {"message": "Not Found"}})
                self.send(200, {"object": "list", "data": [{"id": peer.model, "object": "model", "created": 0,
                                                            "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self.send(404, {"error": {"message": "Not Found"}})
                user = body["messages"][-1]["content"]
                text = user if isinstance(user, str) else next(part["text"] for part in user if part["type"] == "text")
                question = text.splitlines()[0]
                with peer.lock:
                    peer.calls[question] += 1
                    peer.requests.append(body)
                status, payload = peer.reply(body, question)
                if status == 200 and body.get("stream"):
                    return self.stream(payload)
                self.send(status, payload)

            def stream(self, payload):
                """The reply as server-sent events: the reasoning, then the content, then the finish reason."""
                choice = payload["choices"][0]
                deltas = [{"reasoning": choice["message"]["reasoning"]}, {"content": choice["message"]["content"]}]
                events = [{**payload, "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
                events.append({**payload, "object": "chat.completion.chunk",
                               "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
                data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data.encode())))
                self.end_headers()
                self.wfile.write(data.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.root_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = self.root_url + "/v1"

    @staticmethod
    def message(content, reasoning=None, finish_reason="stop", model="peer-model"):
        return 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "finish_reason": finish_reason,
                                  "message": {"role": "assistant", "content": content, "reasoning": reasoning}}]}

    @staticmethod
    def first_choice(body):
        text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
        return text.splitlines()[1].split(") ", 1)[1]  # "(a) <first choice>"

    @staticmethod
    def answer_first(body, question):
        return ScriptedPeer.message(f"The answer is {ScriptedPeer.first_choice(body)}.")

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mmau_dir(tmp_path):
    """A test-mini-shaped MMAU meta of six items (the first choice right), 22.05 kHz clips under test-mini-audios/."""
    (tmp_path / "test-mini-audios").mkdir()
    items = []
    for i in range(N_ITEMS):
        items.append({"id": f"q{i}", "audio_id": f"./test-mini-audios/q{i}.wav", "question": f"Question {i}?",
                      "choices": [f"answer {i}", f"other {i}", f"third {i}", f"fourth {i}"], "answer": f"answer {i}",
                      "dataset": "synthetic", "task": mmau.TASKS[i % 3], "split": "test-mini",
                      "category": "Reasoning", "sub-category": mmau.SUB_CATEGORIES[mmau.TASKS[i % 3]][0],
                      "difficulty": mmau.DIFFICULTIES[i % 3]})
        soundfile.write(tmp_path / "test-mini-audios" / f"q{i}.wav", tone(0.5, 22050, 300.0 + 50 * i), 22050)
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(items))
    return tmp_path


def args(peer, folder, *extra, url=None):
    return ["eval", "mmau", "--server", url or peer.base_url, "--meta", str(folder / "mmau-test-mini.json"),
            "--output-dir", str(folder / "out"), "--concurrency", "2", *extra]


def records(folder, name="predictions.jsonl"):
    path = folder / "out" / name
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else {}


def test_one_clips_500_then_a_run_wide_400_then_the_fixed_server(mmau_dir):
    def broken_clip(body, question):
        if question == "Question 3?":
            return 500, {"error": {"message": "No module named 'torchaudio'"}}
        return ScriptedPeer.answer_first(body, question)

    # 1. One clip keeps failing: that item's error (the clip, the server's message); every other answer is kept.
    with ScriptedPeer(broken_clip) as peer:
        assert cli.main(args(peer, mmau_dir)) == 0
        assert peer.calls["Question 3?"] == 7  # the first try and the client's 6 retries
    first = records(mmau_dir)
    assert set(first) == {f"q{i}" for i in range(N_ITEMS)}
    assert "q3.wav" in first["q3"]["error"] and "torchaudio" in first["q3"]["error"] and first["q3"]["server_error"]
    assert all(first[f"q{i}"]["answer_prediction"] == f"answer {i}" for i in range(N_ITEMS) if i != 3)

    # 2. A run-wide 400 (max_tokens over the model's limit): a non-zero exit with the server's reason, and nothing
    #    recorded as done, so the failed clip stays to be asked.
    def refuse_all(body, question):
        return 400, {"error": {"message": "max_tokens 1024 is too large for this model"}}

    with ScriptedPeer(refuse_all) as peer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        run = subprocess.run([sys.executable, "-m", "tinygiant", *args(peer, mmau_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert sum(peer.calls.values()) == 1  # only q3 was left, and 400s are not retried
    assert run.returncode != 0
    assert "error: every request fails" in run.stderr and "max_tokens 1024 is too large" in run.stderr
    assert set(records(mmau_dir)) == set(first) - {"q3"}  # the failed clip's record is gone: a rerun asks it
    with ScriptedPeer(refuse_all) as peer, pytest.raises(RunWideFailure, match="every request fails"):
        mmau.main(args(peer, mmau_dir)[2:])

    # 3. The fixed server: only the failed clip is asked, and every answer is there.
    with ScriptedPeer() as peer:
        scores = mmau.main(args(peer, mmau_dir)[2:])
        assert dict(peer.calls) == {"Question 3?": 1}
    assert scores["overall"]["correct"] == N_ITEMS and scores["n_errors"] == 0
    final = records(mmau_dir)
    assert final["q3"]["answer_prediction"] == "answer 3"
    assert all(final[k] == first[k] for k in first if k != "q3")  # every earlier answer kept as it was


def test_a_run_wide_failure_from_the_start_stops_early(mmau_dir):
    with ScriptedPeer(lambda body, q: (400, {"error": {"message": "this model does not take audio"}})) as peer, \
            pytest.raises(RunWideFailure, match="does not take audio"):
        mmau.main(args(peer, mmau_dir, "--concurrency", "1", "--batch-size", "1")[2:])
    assert sum(peer.calls.values()) == 3  # stopped after three items, not six
    assert records(mmau_dir) == {}


def test_system_prompt_and_greedy_fields_sent(mmau_dir):
    with ScriptedPeer() as peer:
        mmau.main(args(peer, mmau_dir, "--limit", "1")[2:])
        default = peer.requests[-1]
        mmau.main(args(peer, mmau_dir, "--limit", "2", "--system-prompt", "")[2:])
        none = peer.requests[-1]
        mmau.main(args(peer, mmau_dir, "--limit", "3", "--system-prompt", "Be brief.")[2:])
        text = peer.requests[-1]
        mmau.main(args(peer, mmau_dir, "--limit", "4", "--server-sampling", "server")[2:])
        defaults = peer.requests[-1]
    # Default: no system message, so the server's own template applies.
    assert [m["role"] for m in default["messages"]] == ["user"] and "chat_template_kwargs" not in default
    assert default["temperature"] == 0.0 and default["top_p"] == 1.0
    assert default["top_k"] == -1 and default["repetition_penalty"] == 1.0  # vLLM's fields, pinned for greedy
    assert [m["role"] for m in none["messages"]] == ["user"]
    assert none["chat_template_kwargs"] == NO_DEFAULT_SYSTEM_PROMPT["chat_template_kwargs"]
    assert text["messages"][0] == {"role": "system", "content": "Be brief."}
    assert defaults["temperature"] == 0.0 and not {"top_p", "top_k", "repetition_penalty"} & set(defaults)
    report = (mmau_dir / "out" / "report.md").read_text()
    assert "server's defaults for top_p, top_k and repetition_penalty applied" in report


def test_reasoning_only_and_cut_off_replies(mmau_dir):
    def reply(body, question):
        i = int(question.split()[1].rstrip("?"))
        if i % 2:  # a reasoning parser that never saw </think>: everything in `reasoning`, the content empty
            return ScriptedPeer.message("", f"Listening... the answer is {ScriptedPeer.first_choice(body)}.")
        if i == 4:  # cut at the length limit
            return ScriptedPeer.message("I keep thinking and thinking", None, finish_reason="length")
        return ScriptedPeer.answer_first(body, question)

    with ScriptedPeer(reply, model="org/Qwen2.5-Omni-3B") as peer:
        scores = mmau.main(args(peer, mmau_dir)[2:])
    predictions = records(mmau_dir)
    assert all(predictions[f"q{i}"]["answer_prediction"] == f"answer {i}" for i in (1, 3, 5))
    assert predictions["q4"]["answer_prediction"] == ""
    assert scores["overall"]["correct"] == N_ITEMS - 1 and scores["n_cut_off"] == 1
    raw = records(mmau_dir, "raw_outputs.jsonl")
    assert raw["q4"] == {"id": "q4", "text": "I keep thinking and thinking", "finish_reason": "length"}
    report = (mmau_dir / "out" / "report.md").read_text()
    assert "org/Qwen2.5-Omni-3B" in report and peer.base_url in report and " UTC" in report
    assert "cut at the length limit" in report and ": 1." in report
    assert "| Qwen2.5-Omni-3B (the model evaluated here) | 63.3 |" in report  # beside its own published row
    run = json.loads((mmau_dir / "out" / "run.json").read_text())
    assert run["answerer"] == {"server": peer.base_url, "model": "org/Qwen2.5-Omni-3B"}


def test_url_without_v1_gets_a_hint(mmau_dir):
    with ScriptedPeer() as peer, pytest.raises(RuntimeError, match=r"404.*try http://127\.0\.0\.1:\d+/v1"):
        mmau.main(["--server", peer.root_url, "--meta", str(mmau_dir / "mmau-test-mini.json"),
                   "--output-dir", str(mmau_dir / "out")])


def test_resample_sends_16k(mmau_dir):
    with ScriptedPeer() as peer:
        mmau.main(args(peer, mmau_dir, "--limit", "1", "--resample", "16000")[2:])
        audio = peer.requests[-1]["messages"][-1]["content"][0]["input_audio"]
        mmau.main(args(peer, mmau_dir, "--limit", "2")[2:])
        plain = peer.requests[-1]["messages"][-1]["content"][0]["input_audio"]
    assert soundfile.info(io.BytesIO(base64.b64decode(audio["data"]))).samplerate == 16000
    assert soundfile.info(io.BytesIO(base64.b64decode(plain["data"]))).samplerate == 22050
