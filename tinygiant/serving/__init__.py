"""Serving: the web app from the tools (`web_app`: `tinygiant serve`, its example clips, the Space folder), vLLM's
OpenAI-compatible server (`vllm_server`: `tinygiant serve --engine vllm`, `VllmServer` for scripts and tests), and
where the served model comes from (`model_source`).

`model_source` lives here rather than beside `cli`: its rule is the web app's (`app.py`'s `default_model`, then the
tools' fallbacks), and its one other user, `tinygiant ask`, takes it from here so that `ask` and `serve` run the same
model when no `--model` is given.
"""
