"""TinyGiant served by vLLM (CPU), through the `openai` client against servers on 127.0.0.1.

Every answer is compared with transformers' greedy output on the same checkpoint: vLLM's greedy token ids must be
equal, and its top-5 first-token logprobs within `LOGPROB_TOLERANCE`. Both run in float32 (`--dtype float32`); what
differs is only the kernels (vLLM's CPU attention and fused layers against PyTorch's) and their summation order, which
moves a float32 log-probability by about 1e-5 here. The test model's logits sit several nats apart, so the greedy
tokens are not decided by such noise.

The test model is the tiny random checkpoint made to depend on the question: its language model is redrawn with a
large std (a tiny random Qwen3 otherwise prints only newlines), and so is its intent cross-attention (eq. 12), so that
the question visibly changes the audio embeddings. `test_question_reaches_the_audio_embeddings` shows that it does:
asked with the first question's audio embeddings, the second question gets other tokens. That is what a server whose
multimodal hash left the question out would answer, so the two-question test below can fail.

vLLM runs in its own environment (install.sh makes `.venv-vllm/`; `TINYGIANT_VLLM` names another `vllm` command).
"""

import base64
import concurrent.futures
import functools
import http.server
import io
import json
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
import torch
from helpers import talkative, tone

from int8_tinygiant import quantize_int8, w8a8_encoders_pay_off
from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import SYSTEM_PROMPT, parse_response
from processing_tinygiant import TinyGiantProcessor
from tinygiant import cli
from tinygiant.hub.publish import save_checkpoint
from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint
from tinygiant.serving.vllm_server import (
    DEFAULT_AUDIO_LIMIT,
    VllmServer,
    serve_command,
    server_environment,
    vllm_executable,
)

MAX_TOKENS = 12
LOGPROB_TOLERANCE = 1e-3
TEST_FLAGS = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]
QUESTIONS = ("What is the sound?", "How many beeps are there?")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def question_dependent(model):
    """`talkative`, and an intent cross-attention strong enough that the question changes the audio embeddings."""
    talkative(model)
    torch.manual_seed(2)
    for parameter in model.model.projector.intent_attn.parameters():
        if parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=1.0)
    return model


def sweep(seconds, sampling_rate=16000):
    """A rising tone: its frames differ along the clip, so attention over them can depend on the query."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.3 * np.sin(2 * np.pi * (200 + 600 * t / seconds) * t)).astype(np.float32)


def wav_bytes(samples, sampling_rate=16000, subtype="PCM_16"):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def audio_part(data):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def user_message(question, *clips):
    return {"role": "user", "content": [*(audio_part(c) for c in clips), {"type": "text", "text": question}]}


def as_transformers(messages):
    """The same conversation for `apply_chat_template`: each audio part becomes an audio item holding the file."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "audio", "audio": base64.b64decode(p["input_audio"]["data"])}
                       if p["type"] == "input_audio" else p for p in content]
        out.append({**message, "content": content})
    return out


class Reference:
    """transformers' greedy tokens and first-token log-probabilities for a checkpoint."""

    def __init__(self, folder):
        self.model = TinyGiantForConditionalGeneration.from_pretrained(folder).eval()
        self.processor = TinyGiantProcessor.from_pretrained(folder)

    def inputs(self, messages):
        # Messages without a system turn get the checkpoint's default, from its chat template, as on the server.
        return self.processor.apply_chat_template(as_transformers(messages), tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)

    @torch.no_grad()
    def answer(self, messages):
        inputs = self.inputs(messages)
        tokens = self.model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        logprobs = self.model(**inputs).logits[0, -1].log_softmax(-1)
        return tokens[0, inputs["input_ids"].shape[1]:].tolist(), logprobs

    @torch.no_grad()
    def answer_with_audio_embeddings_of(self, messages, other_messages):
        """Greedy tokens for `messages` whose audio embeddings are those computed for `other_messages`' question."""
        embeds = []
        for conversation in (messages, other_messages):
            i = self.inputs(conversation)
            merged = self.model.model.embed_inputs(
                i["input_ids"], None, i["whisper_input_features"], i["clap_input_features"], i["whisper_lengths"],
                i["htsat_lengths"], i["instruction_mask"])
            embeds.append((i, merged))
        (inputs, own), (other_inputs, other) = embeds
        audio = inputs["input_ids"][0] == self.model.config.audio_token_id
        mixed = own.clone()
        mixed[0, audio] = other[0, other_inputs["input_ids"][0] == self.model.config.audio_token_id]
        tokens = []
        for _ in range(MAX_TOKENS):  # greedy, as `generate` decodes
            tokens.append(int(self.model(inputs_embeds=mixed).logits[0, -1].argmax()))
            if tokens[-1] == self.model.generation_config.eos_token_id:
                break
            mixed = torch.cat([mixed, self.model.get_input_embeddings()(torch.tensor([tokens[-1:]]))], dim=1)
        return tokens


def ask(client, messages, max_tokens=MAX_TOKENS, **kwargs):
    """vLLM's greedy answer: (token ids, {token id: first-token logprob} of the top 5, the message)."""
    response = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=messages, max_tokens=max_tokens, temperature=0,
        logprobs=True, top_logprobs=5, extra_body={"return_tokens_as_token_ids": True}, **kwargs)
    choice = response.choices[0]
    ids = [int(t.token.split(":")[1]) for t in choice.logprobs.content]
    top5 = {int(t.token.split(":")[1]): t.logprob for t in choice.logprobs.content[0].top_logprobs}
    return ids, top5, choice.message


def assert_matches(client, reference, messages):
    ids, top5, message = ask(client, messages)
    expected, logprobs = reference.answer(messages)
    assert ids == expected
    for token, logprob in top5.items():
        assert abs(logprob - logprobs[token].item()) < LOGPROB_TOLERANCE, (token, logprob, logprobs[token].item())
    return ids, message


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The question-dependent test model, and the same with both ablation switches off."""
    root = tmp_path_factory.mktemp("vllm")
    folders = {}
    for name, switches in (("full", {}), ("vanilla", {"use_intent_query": False, "use_clap_gate": False})):
        model, processor = write_tiny_checkpoint(root / f"parts-{name}", **switches)
        model = question_dependent(model) if not switches else talkative(model)
        folders[name] = save_checkpoint(model.eval(), processor, root / name)
    return folders


@pytest.fixture(scope="module")
def reference(checkpoints):
    return Reference(checkpoints["full"])


def start(folder, log, extra=(), audio_limit=DEFAULT_AUDIO_LIMIT):
    return VllmServer(folder, port=free_port(), extra_args=[*TEST_FLAGS, *extra], log_path=log,
                      audio_limit=audio_limit).start()


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """What `tinygiant serve --engine vllm` runs, on the question-dependent model."""
    server = start(checkpoints["full"], tmp_path_factory.mktemp("log") / "vllm.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)


def test_serve_command_has_what_a_tinygiant_checkpoint_needs():
    command = serve_command("ckpt", port=8123)
    assert command[:3] == [vllm_executable(), "serve", "ckpt"]
    assert "--trust-remote-code" in command
    assert command[command.index("--reasoning-parser") + 1] == "tinygiant"
    # The default system turn is the checkpoint's own, in its chat template: the server adds none.
    assert "--default-chat-template-kwargs" not in command
    assert "--hf-overrides" not in command
    int8 = serve_command("ckpt", port=8123, int8_encoders=True)
    assert json.loads(int8[int8.index("--hf-overrides") + 1]) == {"int8_encoders": True}


def test_question_reaches_the_audio_embeddings(reference):
    """On the test model, the second question asked with the first question's audio embeddings (what a cache keyed
    by the audio alone would hand it) gets other tokens than with its own."""
    clip = wav_bytes(sweep(3))
    first = [{"role": "system", "content": SYSTEM_PROMPT}, user_message(QUESTIONS[0], clip)]
    second = [{"role": "system", "content": SYSTEM_PROMPT}, user_message(QUESTIONS[1], clip)]
    assert reference.answer_with_audio_embeddings_of(second, first) != reference.answer(second)[0]


def test_one_clip_then_another_question_about_it(client, reference, checkpoints, tmp_path):
    """Two questions about one clip in one server: each equals transformers' answer and a fresh server's."""
    clip = wav_bytes(sweep(3))
    asked = [[{"role": "system", "content": SYSTEM_PROMPT}, user_message(q, clip)] for q in QUESTIONS]
    answers = [assert_matches(client, reference, messages)[0] for messages in asked]
    assert answers[0] != answers[1]
    # A fresh server, started with the plain documented command, asked the second question first.
    fresh = VllmServer(checkpoints["full"], port=free_port(), extra_args=TEST_FLAGS, log_path=tmp_path / "fresh.log",
                       plain=True)
    with fresh:
        fresh_client = openai.OpenAI(base_url=fresh.url, api_key="none", max_retries=0, timeout=120)
        assert ask(fresh_client, asked[1])[0] == answers[1]


def test_audio_url_parts_data_and_http(client, tmp_path):
    """`audio_url` with a data URL and with an http URL (a file server on 127.0.0.1) answers as `input_audio` does."""
    clip = wav_bytes(tone(1.5, sampling_rate=44100, freq=500.0), 44100)
    (tmp_path / "clip.wav").write_bytes(clip)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as files:
        threading.Thread(target=files.serve_forever, daemon=True).start()
        urls = [f"data:audio/wav;base64,{base64.b64encode(clip).decode()}",
                f"http://127.0.0.1:{files.server_address[1]}/clip.wav"]
        expected = ask(client, [user_message(QUESTIONS[0], clip)])[0]
        for url in urls:
            content = [{"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": QUESTIONS[0]}]
            assert ask(client, [{"role": "user", "content": content}])[0] == expected, url[:30]
        files.shutdown()


def test_tinygiant_serve_engine_vllm_no_app_runs_that_command(monkeypatch):
    ran = []
    monkeypatch.setattr(VllmServer, "serve_in_foreground", lambda server: ran.append(server.command) or 0)
    assert cli.main(["serve", "--engine", "vllm", "--model", "ckpt", "--port", "8123", "--no-app",
                     "--", "--dtype", "float32"]) == 0
    assert cli.main(["serve", "--engine", "vllm", "--model", "ckpt", "--port", "8123", "--no-app", "--no-int8"]) == 0
    # The frozen encoders run as int8 where that is faster (a CPU without AMX), never with `--no-int8`.
    assert ran == [serve_command("ckpt", port=8123, extra_args=["--dtype", "float32"],
                                 int8_encoders=w8a8_encoders_pay_off()),
                   serve_command("ckpt", port=8123)]
    with pytest.raises(SystemExit):  # an app option without the app is a mistake, not a `vllm serve` flag
        cli.main(["serve", "--engine", "vllm", "--model", "ckpt", "--no-app", "--greedy"])


def test_default_system_prompt_applies(client):
    clip = wav_bytes(sweep(2))
    assert ask(client, [user_message(QUESTIONS[0], clip)])[0] == \
        ask(client, [{"role": "system", "content": SYSTEM_PROMPT}, user_message(QUESTIONS[0], clip)])[0]


def test_two_clips_in_one_message_and_a_45_second_clip(client, reference):
    low, high = wav_bytes(tone(1.5, freq=300.0)), wav_bytes(tone(2.0, sampling_rate=22050, freq=900.0), 22050)
    assert_matches(client, reference, [user_message("Which tone is higher, the first or the second?", low, high)])
    long_clip = wav_bytes(np.concatenate([sweep(20), tone(25, freq=700.0)]))  # two Whisper windows, five HTS-AT ones
    assert_matches(client, reference, [user_message(QUESTIONS[0], long_clip)])


def test_reasoning_parser_fields_and_streaming(client, reference):
    """`reasoning` and `content` are `parse_response`'s split of transformers' output; streaming adds up to it."""
    messages = [user_message(QUESTIONS[1], wav_bytes(sweep(2)))]
    ids, message = assert_matches(client, reference, [{"role": "system", "content": SYSTEM_PROMPT}, *messages])
    parsed = parse_response(reference.processor.decode(ids, skip_special_tokens=True))
    assert message.content == parsed["answer"]
    assert getattr(message, "reasoning", None) == parsed["thinking"]
    stream = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages,
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert content == (message.content or "")


def test_concurrent_requests_equal_their_sequential_answers(client):
    clips = [wav_bytes(tone(1.0 + 0.25 * i, freq=250.0 + 60 * i)) for i in range(4)]
    requests = [[user_message(QUESTIONS[i % 2], clips[i % 4])] for i in range(16)]
    sequential = [ask(client, r)[0] for r in requests[:8]]  # requests 8-15 repeat 0-7
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_answers = list(pool.map(lambda r: ask(client, r)[0], requests))
    assert concurrent_answers == sequential + sequential


def bad_request(client, content):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=4,
                                       messages=[{"role": "user", "content": content}])
    return str(error.value)


def test_bad_audio_gets_400_naming_the_problem(client, tmp_path):
    text_file = b"this is a text file, not audio\n" * 20
    nan_clip = tone(1.0)
    nan_clip[100] = np.nan
    cases = {
        "random bytes": ([audio_part(np.random.default_rng(0).bytes(4000))], "audio"),
        "a text file": ([audio_part(text_file)], "audio"),
        "an empty clip": ([audio_part(wav_bytes(np.zeros(0, np.float32)))], "audio"),
        "NaN samples": ([audio_part(wav_bytes(nan_clip, subtype="FLOAT"))], "NaN"),
        "over the length limit": ([audio_part(wav_bytes(np.zeros(601 * 8000, np.int16), 8000))], "600"),
        "more audios than the limit": ([audio_part(wav_bytes(tone(0.2)))] * (DEFAULT_AUDIO_LIMIT + 1), "audio"),
    }
    for name, (parts, words) in cases.items():
        message = bad_request(client, [*parts, {"type": "text", "text": "What is it?"}])
        assert words.lower() in message.lower(), (name, message)
    assert ask(client, [user_message(QUESTIONS[0], wav_bytes(sweep(1)))])[0]  # still answering


def test_client_that_disconnects_mid_stream(server, client):
    body = {"model": client.models.list().data[0].id, "max_tokens": 200, "stream": True, "temperature": 0,
            "messages": [user_message(QUESTIONS[0], wav_bytes(sweep(2)))]}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk, then hang up
    assert server.healthy()
    assert ask(client, [user_message(QUESTIONS[1], wav_bytes(sweep(1)))])[0]


def test_both_switches_off_with_two_tensor_parallel_ranks(checkpoints, tmp_path):
    """The "Vanilla" ablation (no intent query, no CLAP gate), on `--tensor-parallel-size 2`, one core a rank."""
    reference = Reference(checkpoints["vanilla"])
    with VllmServer(checkpoints["vanilla"], port=free_port(), log_path=tmp_path / "tp2.log",
                    extra_args=[*TEST_FLAGS, "--tensor-parallel-size", "2"],
                    env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as server:  # vLLM binds ranks by NUMA node otherwise
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)
        for question in QUESTIONS:
            assert_matches(client, reference, [user_message(question, wav_bytes(sweep(2)))])


def test_int8_encoders_equal_transformers_with_the_same_int8_encoders(checkpoints, tmp_path):
    """`--hf-overrides '{"int8_encoders": true}'` (what `tinygiant serve --engine vllm` passes on a CPU where it pays
    off): the frozen encoders run as the checkpoint's W8A8 `quantize_int8` makes them in transformers, and the answers
    are those of that model."""
    reference = Reference(checkpoints["full"])
    messages = [[user_message(question, wav_bytes(sweep(2)))] for question in QUESTIONS]
    float_logprobs = [reference.answer(m)[1] for m in messages]
    audio = reference.model.model
    quantize_int8(reference.model, modules=[audio.whisper_encoder, audio.htsat_encoder, audio.clap_encoder],
                  activations="int8")
    # int8 moves the answer's log-probabilities by more than the tolerance, so a float server would fail below.
    assert max((reference.answer(m)[1] - f).abs().max().item() for m, f in zip(messages, float_logprobs)) > \
        LOGPROB_TOLERANCE
    with VllmServer(checkpoints["full"], port=free_port(), log_path=tmp_path / "int8.log", extra_args=TEST_FLAGS,
                    int8_encoders=True) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)
        for m in messages:
            assert_matches(client, reference, m)


def test_reasoning_parser_reads_every_form_parse_response_reads(checkpoints):
    """Inside the vLLM environment: CoTA's upper-case tags, an unclosed think block and no block; streamed one
    character at a time, the pieces add up to the whole."""
    script = f"""
import json
from transformers import AutoTokenizer
from tinygiant_vllm.reasoning import TinyGiantReasoningParser
parser = TinyGiantReasoningParser(AutoTokenizer.from_pretrained({str(checkpoints["full"])!r}, trust_remote_code=True))
outputs = ["<THINK><PLANNING>listen</PLANNING><SUMMARY>two</SUMMARY></THINK>\\n<RESPONSE>Two beeps.</RESPONSE>",
           "<think>\\nI hear a tone</think>\\n\\nA tone.", "<think>\\nstill thinking about it", "Just an answer <b>.",
           "<think>\\n\\n</think>\\n\\nNo reasoning here."]
rows = []
for text in outputs:
    streamed = ["", ""]
    for i in range(1, len(text) + 1):
        delta = parser.extract_reasoning_streaming(text[:i - 1], text[:i], text[i - 1], [], [], [])
        if delta is not None:
            streamed[0] += delta.reasoning or ""
            streamed[1] += delta.content or ""
    rows.append([list(parser.extract_reasoning(text, None)), streamed])
print(json.dumps(rows))
"""
    python = str(Path(vllm_executable()).with_name("python"))
    run = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [whole for whole, _ in rows] == [
        ["<PLANNING>listen</PLANNING><SUMMARY>two</SUMMARY>", "Two beeps."],
        ["I hear a tone", "A tone."],
        ["still thinking about it", None],
        [None, "Just an answer <b>."],
        ["", "No reasoning here."],
    ]
    for whole, streamed in rows:
        assert streamed == [part or "" for part in whole]


def test_a_follow_up_question_runs_only_the_projector(checkpoints, tmp_path):
    """In `vllm.LLM`: a second question about a clip misses vLLM's caches (the question is in the hash) but hits
    the model's own cache of the frozen encoders' outputs, so only the projector and the LLM run again."""
    script = tmp_path / "follow_up.py"
    script.write_text(f"""
import json, os
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine and its one worker in this process, for apply_model
import numpy as np
from vllm import LLM, SamplingParams

def cache_counts(model):
    return model.audio_model.audio_cache.hits, model.audio_model.audio_cache.misses

if __name__ == "__main__":
    llm = LLM(model={str(checkpoints["full"])!r}, trust_remote_code=True, dtype="float32", max_model_len=2048,
              enforce_eager=True, distributed_executor_backend="uni")
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    cache = lambda: llm.apply_model(cache_counts)[0]
    before = cache()
    for question in {list(QUESTIONS)!r}:
        prompt = "<|im_start|>user\\n<audio>" + question + "<|im_end|>\\n<|im_start|>assistant\\n"
        llm.generate({{"prompt": prompt, "multi_modal_data": {{"audio": (clip, 16000)}}}}, SamplingParams(max_tokens=2))
    print(json.dumps([before, cache()]))
""")
    python = str(Path(vllm_executable()).with_name("python"))
    run = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=600,
                         env=server_environment())
    assert run.returncode == 0, run.stderr[-3000:]
    (hits_before, misses_before), (hits, misses) = json.loads(run.stdout.strip().splitlines()[-1])
    assert (hits - hits_before, misses - misses_before) == (1, 1)


def test_mmau_through_the_server_equals_the_in_process_runner(server, checkpoints, tmp_path):
    """`tinygiant eval mmau --server URL` against TinyGiant on vLLM writes the in-process runner's predictions (each
    with its own default system prompt: the checkpoint's), and a report naming the server."""
    from tinygiant.eval import mmau

    (tmp_path / "test-mini-audios").mkdir()
    meta = []
    for i, seconds in enumerate((1.0, 2.5, 4.0)):
        soundfile.write(tmp_path / "test-mini-audios" / f"{i}.wav", sweep(seconds, 22050), 22050)
        meta.append({"id": f"item{i}", "audio_id": f"./test-mini-audios/{i}.wav", "question": QUESTIONS[i % 2],
                     "choices": ["one", "two", "three"][: 2 + i % 2], "answer": "two", "dataset": "synthetic",
                     "task": mmau.TASKS[i], "split": "test-mini", "category": "Reasoning",
                     "sub-category": mmau.SUB_CATEGORIES[mmau.TASKS[i]][0], "difficulty": "easy"})
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(meta))
    common = ["--meta", str(tmp_path / "mmau-test-mini.json"), "--max-new-tokens", str(MAX_TOKENS)]
    by_server = mmau.main(["--server", server.url, "--concurrency", "3", "--output-dir", str(tmp_path / "server"),
                           *common])
    in_process = mmau.main(["--model", str(checkpoints["full"]), "--batch-size", "1",
                            "--output-dir", str(tmp_path / "local"), *common])
    server_records, local_records = ([json.loads(line) for line in (tmp_path / run / "predictions.jsonl")
                                      .read_text().splitlines()] for run in ("server", "local"))
    assert server_records == local_records and len(server_records) == 3
    assert by_server["overall"] == in_process["overall"]
    assert server.url in (tmp_path / "server" / "report.md").read_text()


def client_model_name(server):
    return openai.OpenAI(base_url=server.url, api_key="none").models.list().data[0].id
