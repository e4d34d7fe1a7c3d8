"""Any OpenAI-compatible audio chat endpoint, called like the `audio-reasoning` pipeline.

    endpoint = ChatEndpoint("http://127.0.0.1:8000/v1", model="runs/demo/model", concurrency=8)
    endpoint([{"audio": "clip.wav", "question": "How many beeps?", "choices": ["one", "two"]}])
    # [{"text", "thinking", "answer", "choice", "finish_reason"}]

The evaluation runner takes it in place of the in-process pipeline (`tinygiant eval NAME --server URL --server-model
NAME`), so TinyGiant on vLLM, or a peer (Qwen2-Audio, Audio Flamingo 3, ...) behind any such server, is asked the same
question and its lettered choices and read back by the same rule, both from `parsing_tinygiant`: `openai_messages`
sends the audio as an `input_audio` part (the file's bytes, base64).

Choices made for scoring a peer fairly:
- System prompt: by default none is sent, so the served model's own chat template applies (a TinyGiant checkpoint
  carries its trained prompt there); `system_prompt=""` asks a TinyGiant server for no system turn
  (`NO_DEFAULT_SYSTEM_PROMPT`); any other text is sent as the system message.
- Greedy is greedy: `sampling="greedy"` sends temperature 0, `top_p` 1 and, as vLLM's extra sampling fields, `top_k`
  -1 and `repetition_penalty` 1, which vLLM would otherwise take from the model's `generation_config`.
  `sampling="server"` sends temperature 0 only (for servers that refuse those fields); the report says so.
- The reply: a reasoning the server split off (`reasoning` in vLLM 0.32, `reasoning_content` elsewhere) goes back in
  front of the answer inside `<think>`, so the output is read as the in-process pipeline's is. A reasoning parser that
  never saw `</think>` puts the whole reply in the reasoning and leaves the content empty: the answer is then read from
  the reasoning. A reply cut at the length limit (`finish_reason == "length"`) has no answer, and is counted.
- `resample=16000` sends every clip resampled to that rate as WAV (soxr), for servers that cannot resample.

Requests run `concurrency` at a time, at most `qps` started per second; the client retries 429s, 5xx and timeouts with
exponential backoff (`client_tinygiant`). `answer_each` gives each item its output or its `ServerError`; calling the
endpoint like the pipeline raises the first `ServerError` instead.
"""

import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from client_tinygiant import ServerError, openai_client, server_errors
from parsing_tinygiant import (
    NO_DEFAULT_SYSTEM_PROMPT,
    chat_reply_text,
    conversation,
    format_question,
    openai_messages,
    parse_output,
    reasoning_of,
)
from tinygiant.files import RateLimiter

# vLLM's sampling fields that greedy decoding must pin (vLLM fills them from the model's generation_config otherwise).
GREEDY_EXTRA_BODY = {"top_k": -1, "repetition_penalty": 1.0}


def endpoint_messages(audio: str | Path | bytes, question: str, choices: list[str] | None = None,
                      system_prompt: str | None = None) -> list[dict]:
    """The pipeline's prompt for one audio (a file path or a WAV file's bytes), as the chat API takes it."""
    return openai_messages(conversation(format_question(question, choices), system_prompt=system_prompt, audio=audio))


def resampled_wav(path: str | Path, rate: int) -> bytes:
    """The clip at `path` as a mono 16-bit WAV file at `rate` Hz."""
    import soundfile
    import soxr

    from processing_tinygiant import load_audio

    waveform, source_rate = load_audio(str(path))
    if source_rate != rate:
        waveform = soxr.resample(waveform, source_rate, rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class ChatEndpoint:
    """Answers `{"audio": path, "question", "choices"}` inputs through an OpenAI-compatible chat endpoint."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, concurrency: int = 4,
                 qps: float | None = None, timeout: float = 600.0, max_retries: int = 6,
                 system_prompt: str | None = None, sampling: str = "greedy", resample: int | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if sampling not in ("greedy", "server"):
            raise ValueError(f"sampling must be 'greedy' or 'server', got {sampling!r}")
        self.base_url = base_url
        self.client = openai_client(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self.concurrency, self.system_prompt = concurrency, system_prompt
        self.sampling, self.resample = sampling, resample
        self.limiter = RateLimiter(qps)
        if model is None:
            with server_errors(self.client):
                model = self.client.models.list().data[0].id
        self.model = model

    def settings(self) -> dict[str, Any]:
        """The request settings, for the report."""
        return {"sampling": "greedy (temperature 0, top_p 1, top_k -1, repetition_penalty 1)"
                if self.sampling == "greedy" else "temperature 0; the server's defaults for top_p, top_k and "
                                                  "repetition_penalty applied",
                "resampled_to_hz": self.resample, "concurrency": self.concurrency}

    def __call__(self, inputs: dict | Iterable[dict], batch_size: int | None = None, max_new_tokens: int = 1024,
                 do_sample: bool = False) -> dict | list[dict]:
        """Outputs for one input dict or a list of them, in order; `batch_size` is accepted as the pipeline's is (the
        requests in flight are bounded by `concurrency`). Raises the first item's `ServerError`."""
        single = isinstance(inputs, dict)
        outputs = self.answer_each([inputs] if single else list(inputs), max_new_tokens, do_sample)
        failed = next((o for o in outputs if isinstance(o, Exception)), None)
        if failed is not None:
            raise failed
        return outputs[0] if single else outputs

    def answer_each(self, inputs: list[dict], max_new_tokens: int = 1024,
                    do_sample: bool = False) -> list[dict | Exception]:
        """Each input's output, or the `ServerError` (or `ValueError`, for audio that cannot be sent) it ended in."""

        def one(item: dict) -> dict | Exception:
            try:
                return self.answer(item, max_new_tokens, do_sample)
            except (ServerError, ValueError, OSError) as error:
                return error

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, inputs))

    def request(self, item: dict, max_new_tokens: int, do_sample: bool) -> dict:
        """The chat-completions request for one input."""
        if not isinstance(item.get("audio"), (str, Path)):
            raise ValueError("an endpoint input's audio must be a file path")
        audio = resampled_wav(item["audio"], self.resample) if self.resample else item["audio"]
        system_prompt = self.system_prompt or None  # "" asks for no system turn below, None sends none
        request = {"model": self.model, "max_tokens": max_new_tokens,
                   "messages": endpoint_messages(audio, item["question"], item.get("choices"), system_prompt)}
        extra_body = {}
        if do_sample:
            request["temperature"] = 1.0
        else:
            request["temperature"] = 0.0
            if self.sampling == "greedy":
                request["top_p"] = 1.0
                extra_body.update(GREEDY_EXTRA_BODY)
        if self.system_prompt == "":
            extra_body.update(NO_DEFAULT_SYSTEM_PROMPT)
        if extra_body:
            request["extra_body"] = extra_body
        return request

    def answer(self, item: dict, max_new_tokens: int = 1024, do_sample: bool = False) -> dict:
        request = self.request(item, max_new_tokens, do_sample)
        self.limiter.wait()
        with server_errors(self.client):
            response = self.client.chat.completions.create(**request)
        choice = response.choices[0]
        content, reasoning = choice.message.content, reasoning_of(choice.message)
        if not (content or "").strip() and reasoning:
            text = reasoning  # a reasoning parser that never saw `</think>`: the reply is all in `reasoning`
        else:
            text = chat_reply_text(content, reasoning)
        output = parse_output(text, item.get("choices"), finished=choice.finish_reason != "length")
        return {**output, "finish_reason": choice.finish_reason}
