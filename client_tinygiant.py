"""One way to call an OpenAI-compatible chat server (vLLM, Ollama, OpenAI, ...): the client, and its errors in words.

    client = openai_client("http://127.0.0.1:8000/v1")
    with server_errors(client):
        reply = client.chat.completions.create(model=..., messages=...)

Used by the web app's server backend (`app.py`), the evaluation's chat endpoint and its LLM judge, so that all three
take a key, a base URL and retries the same way, and report a failing server the same way: `ServerError`, with the
HTTP status (None when no reply came: refused connection, timeout) and the server's own message. The `openai` client
retries 429s, 5xx, timeouts and refused connections itself, with exponential backoff (honouring `Retry-After`); a
`ServerError` is what is left after those retries. Importing this module needs only the standard library.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import openai

# Local servers ignore the key, but the client requires one.
PLACEHOLDER_KEY = "unused"


class ServerError(RuntimeError):
    """A chat server that failed after the client's retries. `status` is the HTTP status, or None when no reply came;
    `server_message` is what the server said (or the client's reason)."""

    def __init__(self, message: str, status: int | None = None, server_message: str = "") -> None:
        super().__init__(message)
        self.status, self.server_message = status, server_message

    @property
    def refused(self) -> bool:
        """Whether the server answered and refused the request itself (4xx): sending it again would not help."""
        return self.status is not None and 400 <= self.status < 500


def openai_client(base_url: str | None = None, api_key: str | None = None, key_variable: str | None = None,
                  timeout: float = 600.0, max_retries: int = 6, key_required: bool = False) -> "openai.OpenAI":
    """An `openai.OpenAI` client for `base_url` (None: OpenAI's, or `OPENAI_BASE_URL`).

    The key is `api_key`, else the environment variable `key_variable`, else a placeholder; with `key_required`
    (a hosted API) a missing key raises `ValueError` naming the variable."""
    try:
        import openai
    except ImportError as error:
        raise ImportError("calling a chat server needs the openai client: pip install openai") from error
    key = api_key or (os.environ.get(key_variable) if key_variable else None)
    if not key:
        if key_required:
            raise ValueError(f"set {key_variable or 'an API key'} to call {base_url or 'the OpenAI API'}")
        key = PLACEHOLDER_KEY
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)


def url_hint(base_url: str) -> str:
    """A one-line hint when `base_url` lacks the `/v1` that OpenAI-compatible servers serve under, else ""."""
    path = urlparse(str(base_url)).path.rstrip("/")
    if path.endswith("/v1"):
        return ""
    return f" (OpenAI-compatible servers serve under /v1: try {str(base_url).rstrip('/')}/v1)"


def _message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(getattr(error, "message", None) or error)


@contextmanager
def server_errors(client: "openai.OpenAI") -> Iterator[None]:
    """Turns the `openai` client's errors raised inside the block (the call, or iterating a stream) into
    `ServerError`s that name the server, the status and the server's message; a 404 from a URL without `/v1` gets the
    hint."""
    import openai

    base_url = str(client.base_url)
    try:
        yield
    except openai.APIStatusError as error:
        message = _message(error)
        hint = url_hint(base_url) if error.status_code == 404 else ""
        raise ServerError(f"{base_url} answered HTTP {error.status_code}: {message}{hint}", error.status_code,
                          message) from error
    except openai.APIError as error:  # no reply: refused connection, timeout
        raise ServerError(f"{base_url} did not answer: {type(error).__name__}: {error}", None, str(error)) from error
