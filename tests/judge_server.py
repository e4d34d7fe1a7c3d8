"""A small OpenAI-compatible chat-completions server on 127.0.0.1 that plays an LLM judge with scripted replies.

    with ScriptedJudge({"What is it?": [[1, 1, 0, 0, 0], "429", "timeout", "malformed", ...]}) as judge:
        ...  # point the openai client at judge.base_url

Each request is matched to its item by the "Question: ..." line of the prompt; the item's next scripted entry is
used up: a list of scores (one per criterion, in the prompt's order, replied as the judge's JSON list), "429" (rate
limited, with a short Retry-After), "500", "timeout" (no reply before the client gives up), "malformed" (a reply
that is not JSON). When an item's script is used up, `default` scores are replied. `calls` counts the requests per
question, `requests` keeps their bodies, `arrivals` their times; `most_in_flight` is the most served at once.
"""

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)
CRITERION = re.compile(r"^\d+\. name: (.*)$", re.MULTILINE)


class ScriptedJudge:
    def __init__(self, script=None, default=None, delay=0.0, timeout_sleep=2.0):
        self.script = {question: list(entries) for question, entries in (script or {}).items()}
        self.default, self.delay, self.timeout_sleep = default, delay, timeout_sleep
        self.calls, self.requests = Counter(), []
        self.arrivals, self.in_flight, self.most_in_flight = [], 0, 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers, payload = judge.respond(body)
                if status is None:  # a timeout: say nothing until the client has given up
                    time.sleep(judge.timeout_sleep)
                    return
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def respond(self, body):
        """`(status, headers, payload)` for one request; status None means no reply at all."""
        prompt = "\n".join(m["content"] for m in body["messages"])
        question = QUESTION.search(prompt).group(1)
        names = CRITERION.findall(prompt)
        with self.lock:
            self.calls[question] += 1
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            entries = self.script.get(question)
            entry = entries.pop(0) if entries else self.default
        try:
            return self.reply(entry, body, prompt, question, names)
        finally:
            with self.lock:
                self.in_flight -= 1

    def reply(self, entry, body, prompt, question, names):
        if self.delay:
            time.sleep(self.delay)
        if entry == "429":
            return 429, {"retry-after-ms": "20"}, {"error": {"message": "rate limited", "type": "rate_limit"}}
        if entry == "500":
            return 500, {"retry-after-ms": "20"}, {"error": {"message": "server error", "type": "server_error"}}
        if entry == "timeout":
            return None, {}, None
        if entry is None:
            return 400, {}, {"error": {"message": f"no scripted reply left for {question!r}"}}
        if entry == "malformed":
            content = "The reasoning looks fine to me, I would give it a good score."
        else:
            content = json.dumps([{"name": n, "score": s, "reason": "scripted"} for n, s in zip(names, entry)])
        return 200, {}, {
            "id": f"chatcmpl-{sum(self.calls.values())}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": (len(prompt) + len(content)) // 4},
        }

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
