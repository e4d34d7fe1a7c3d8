"""`client_tinygiant`, the one OpenAI client of the web app's server backend, the evaluation's endpoint and the judge:
the key rule, the errors in words (status, the server's message, the /v1 hint), against a scripted server."""

import socket

import pytest
from test_eval_peer import ScriptedPeer

from app import ServerBackend
from client_tinygiant import PLACEHOLDER_KEY, ServerError, openai_client, server_errors, url_hint
from tinygiant.eval.endpoint import ChatEndpoint
from tinygiant.eval.rubrics import Judge


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_key_rule(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert openai_client("http://127.0.0.1:9/v1").api_key == PLACEHOLDER_KEY
    with pytest.raises(ValueError, match="set OPENAI_API_KEY"):
        openai_client(None, key_variable="OPENAI_API_KEY", key_required=True)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert openai_client(None, key_variable="OPENAI_API_KEY", key_required=True).api_key == "sk-test"
    assert openai_client("http://x/v1", "given", key_variable="OPENAI_API_KEY").api_key == "given"


def test_url_hint():
    assert url_hint("http://127.0.0.1:8000/v1") == url_hint("http://127.0.0.1:8000/v1/") == ""
    assert url_hint("http://127.0.0.1:8000").endswith("try http://127.0.0.1:8000/v1)")


def test_errors_name_the_status_and_the_servers_message():
    refuse = ScriptedPeer(lambda body, q: (400, {"error": {"message": "max_tokens is too large"}}))
    with refuse as peer:
        client = openai_client(peer.base_url, max_retries=0)
        with pytest.raises(ServerError) as caught, server_errors(client):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
                {"type": "text", "text": "Question 1?"}]}])
        assert caught.value.status == 400 and caught.value.refused
        assert caught.value.server_message == "max_tokens is too large" and "HTTP 400" in str(caught.value)
        with pytest.raises(ServerError, match="HTTP 404.*try http"):
            ChatEndpoint(peer.root_url)  # asks the models at the root: 404, with the hint
    client = openai_client(f"http://127.0.0.1:{free_port()}/v1", max_retries=0, timeout=5)
    with pytest.raises(ServerError) as caught, server_errors(client):
        client.models.list()
    assert caught.value.status is None and not caught.value.refused and "did not answer" in str(caught.value)


def test_the_web_apps_server_backend_streams_a_reply():
    reply = ScriptedPeer.message("The answer is a dog.", "It barks.")
    with ScriptedPeer(lambda body, q: reply) as peer:
        backend = ServerBackend(peer.base_url, call_kwargs={"max_new_tokens": 50, "do_sample": False})
        steps = list(backend.stream([{"role": "user", "content": [{"type": "text", "text": "Question 1?"}]}],
                                    choices=["a dog", "a cat"]))
        assert peer.requests[-1]["stream"] and peer.requests[-1]["temperature"] == 0.0
    text, result = steps[-1]
    assert [r for _, r in steps[:-1]] == [None] * (len(steps) - 1)
    assert result["thinking"] == "It barks." and result["choice"] == "a dog"
    assert text.startswith("<think>") and text.endswith("The answer is a dog.")


def test_the_three_users_share_it():
    with ScriptedPeer(lambda body, q: (400, {"error": {"message": "no audio here"}}), model="served") as peer:
        backend = ServerBackend(peer.base_url)
        assert backend.model == "served" and backend.client.api_key == PLACEHOLDER_KEY
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Question 1?"}]}]
        with pytest.raises(RuntimeError, match="the model server refused the request: no audio here"):
            list(backend.stream(conversation))
        assert ChatEndpoint(peer.base_url).model == "served"
        judge = Judge(base_url=peer.base_url, max_retries=0)
        with pytest.raises(RuntimeError, match="the judge at .* failed after retries: .*no audio here"):
            judge.grade([{"role": "user", "content": "Question: x"}], [{"name": "a", "choices": [0, 1]}])
    with pytest.raises(RuntimeError, match="the model server at http://127.0.0.1:.* did not answer"):
        ServerBackend(f"http://127.0.0.1:{free_port()}/v1", timeout=5)
