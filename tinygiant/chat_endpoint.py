"""Any OpenAI-compatible audio chat endpoint, called like the `audio-reasoning` pipeline.

    endpoint = ChatEndpoint("http://127.0.0.1:8000/v1", model="runs/demo/model", concurrency=8)
    endpoint([{"audio": "clip.wav", "question": "How many beeps?", "choices": ["one", "two"]}])
    # [{"text", "thinking", "answer", "choice"}]

The MMAR harness takes it in place of the in-process pipeline (`tinygiant eval mmar --server URL --server-model
NAME`), so TinyGiant on vLLM, or a peer (Qwen2-Audio, Audio Flamingo 3, ...) behind any such server, is asked the same
prompt (the system prompt, the question and its lettered choices) and read back by the same rule, both from
`parsing_tinygiant`: `openai_messages` sends the audio as an `input_audio` part (the file's bytes, base64), and
`chat_reply_text` puts a reasoning the server split off (`reasoning` in vLLM 0.32, `reasoning_content` in older vLLM
and elsewhere) back in front of the answer inside `<think>`, so the output is read as the in-process pipeline's is.

Requests run `concurrency` at a time, at most `qps` started per second; the client retries 429s, 5xx and timeouts with
exponential backoff (`max_retries`). An audio the server refuses (HTTP 400) raises `ValueError` with its message, as
the pipeline does for bad input; a server that keeps failing raises `RuntimeError`.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from parsing_tinygiant import (NO_DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPT, chat_reply_text, conversation, format_question,
                               openai_messages, parse_output, reasoning_of)
from tinygiant.rubrics import RateLimiter


def endpoint_messages(audio_path, question, choices=None, system_prompt=SYSTEM_PROMPT):
    """The pipeline's prompt for one audio file, as the chat API takes it."""
    return openai_messages(conversation(format_question(question, choices), system_prompt=system_prompt, audio=audio_path))


class ChatEndpoint:
    """Answers `{"audio": path, "question", "choices"}` inputs through an OpenAI-compatible chat endpoint."""

    def __init__(self, base_url, model, api_key=None, concurrency=4, qps=None, timeout=600.0, max_retries=6,
                 system_prompt=SYSTEM_PROMPT):
        import openai

        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout,
                                    max_retries=max_retries)
        self.model, self.concurrency, self.system_prompt = model, concurrency, system_prompt
        self.limiter = RateLimiter(qps)

    def __call__(self, inputs, batch_size=None, max_new_tokens=1024, do_sample=False):
        """Outputs for one input dict or a list of them, in order; `batch_size` is accepted as the pipeline's is (the
        requests in flight are bounded by `concurrency`)."""
        single = isinstance(inputs, dict)
        items = [inputs] if single else list(inputs)
        with ThreadPoolExecutor(self.concurrency) as pool:
            outputs = list(pool.map(lambda item: self.answer(item, max_new_tokens, do_sample), items))
        return outputs[0] if single else outputs

    def answer(self, item, max_new_tokens=1024, do_sample=False):
        if not isinstance(item.get("audio"), (str, Path)):
            raise ValueError("an endpoint input's audio must be a file path")
        messages = endpoint_messages(item["audio"], item["question"], item.get("choices"), self.system_prompt)
        self.limiter.wait()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_new_tokens, temperature=1.0 if do_sample else 0.0,
                extra_body=None if self.system_prompt else NO_DEFAULT_SYSTEM_PROMPT)
        except self.openai.BadRequestError as error:
            raise ValueError(f"the server refused {item['audio']}: {error}") from error
        except self.openai.APIError as error:  # connection, timeout and status errors, after the retries
            raise RuntimeError(f"{self.client.base_url} failed after retries: {type(error).__name__}: {error}") from error
        choice = response.choices[0]
        text = chat_reply_text(choice.message.content, reasoning_of(choice.message))
        return parse_output(text, item.get("choices"), finished=choice.finish_reason != "length")
