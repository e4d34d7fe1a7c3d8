"""The web app in a real browser: `app.py` serves a tiny checkpoint on 127.0.0.1, headless Chromium uses it; and its
`/answer` endpoint through `gradio_client`. Each test runs on both backends: the model in the app's process
(`tinygiant serve`) and on a vLLM server (`tinygiant serve --engine vllm`, which starts the server and the app on it;
float32, so that its greedy answers are transformers').

Set `WEB_APP_SCREENSHOT=docs/web_app.png` to refresh the screenshot in docs/web_app.md (by default it goes to the test's
temporary folder), `WEB_APP_MODEL=<checkpoint>` to serve a trained model instead of a tiny random one, and
`WEB_APP_MAX_NEW_TOKENS` (default 12) to let it finish its reasoning.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from helpers import talkative
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from modeling_tinygiant import TinyGiantForConditionalGeneration
from parsing_tinygiant import conversation, format_question, parse_response
from pipeline_tinygiant import load_pipeline
from tinygiant.demo.synthetic import generate_clip
from tinygiant.hub.publish import save_checkpoint
from tinygiant.serving.web_app import write_examples

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The app is started with the same settings; no system turn, as the offline demo's model is trained.
GENERATION = {"max_new_tokens": int(os.environ.get("WEB_APP_MAX_NEW_TOKENS", 12)), "do_sample": False,
              "system_prompt": ""}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dir, processor):
    if os.environ.get("WEB_APP_MODEL"):
        return Path(os.environ["WEB_APP_MODEL"])
    model = talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("web") / "model")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=["in-process", "vllm"])
def server(request, checkpoint, tmp_path_factory):
    """`tinygiant serve` (which runs `app.py`) on a free port, with the synthetic examples; with the `vllm` backend,
    `tinygiant serve --engine vllm`."""
    examples = write_examples(tmp_path_factory.mktemp("examples"))
    port = free_port()
    logs = tmp_path_factory.mktemp("log")
    app_args = ["--port", str(port), "--examples", str(examples), "--max-new-tokens", str(GENERATION["max_new_tokens"]),
                "--system-prompt", ""]  # greedy: the app's default on both backends
    if request.param == "vllm":
        command = ["serve", "--engine", "vllm", "--model", str(checkpoint), "--port", str(free_port()),
                   "--log", str(logs / "vllm.log"), "--no-int8", *app_args[2:], "--app-port", str(port),
                   "--", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]
    else:
        command = ["serve", "--model", str(checkpoint), "--no-int8", *app_args]
    log = open(logs / "app.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "tinygiant", *command], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a vLLM server takes a minute or two to start on 2 cores
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                os.killpg(process.pid, signal.SIGKILL)
                vllm_log = logs / "vllm.log"
                pytest.fail(f"the app did not start:\n{log.read()[-3000:]}\n"
                            f"{vllm_log.read_text()[-3000:] if vllm_log.is_file() else ''}")
            time.sleep(0.5)
    yield url
    process.terminate()  # `tinygiant serve --engine vllm` stops its server on SIGTERM
    process.wait(timeout=90)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left of the process group
    except ProcessLookupError:
        pass
    log.close()


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "the browser test needs Debian's chromium and chromium-driver (install.sh installs them as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_app(browser, url):
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))


def upload(browser, path):
    browser.find_element(By.CSS_SELECTOR, "#clip input[type=file]").send_keys(str(path))
    WebDriverWait(browser, 90).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#clip audio, #clip .waveform-container"))


def ask(browser, question, choices="", timeout=120):
    """Type the question (and choices), press Ask, wait until the app says it is done; returns the status text."""
    boxes = {name: browser.find_element(By.CSS_SELECTOR, f"#{name} textarea") for name in ("question", "choices")}
    for name, text in (("question", question), ("choices", choices)):
        boxes[name].send_keys(Keys.CONTROL + "a")  # select and delete as a user would: clear() sends no input event
        boxes[name].send_keys(Keys.DELETE)
        if text:
            boxes[name].send_keys(text)
    before = status(browser)
    browser.find_element(By.ID, "ask").click()
    # Every final status is new: an answer's names its question number, an error starts with a warning sign. One read
    # per check, returned as it was read: in between, the status shows "Listening and thinking…", and Gradio puts
    # its timer ("0.1s") over the old text while the event is pending.
    def final_status(b):
        text = status(b)
        pending = re.match(r"\d+(\.\d+)?s\b", text)
        return text if text != before and not pending and ("follow-up" in text or "⚠" in text) else False

    return WebDriverWait(browser, timeout).until(final_status)


def status(browser):
    return browser.find_element(By.ID, "status").text


def chat_text(browser):
    return " ".join(browser.find_element(By.ID, "chat").text.split())


def words(text):
    """The text's letters and digits only: markdown rendering and token spacing change nothing else that matters."""
    return re.sub(r"\W+", "", text)


def test_ask_and_follow_up_in_the_browser(server, browser, checkpoint, tmp_path):
    clip = generate_clip("count_beeps", seed=3)
    wav = tmp_path / "beeps.wav"
    soundfile.write(wav, clip.waveform, clip.sampling_rate)
    # What the model answers, asked directly through the pipeline with the same settings.
    pipe = load_pipeline(str(checkpoint))
    first = conversation(format_question(clip.question, clip.choices), system_prompt=None, audio=str(wav))
    expected = pipe(first, choices=clip.choices, **GENERATION)
    follow_up = pipe(expected["generated_text"] + [{"role": "user", "content": "Are you sure?"}], **GENERATION)

    open_app(browser, server)
    upload(browser, wav)
    assert "follow-up" in ask(browser, clip.question, ", ".join(clip.choices))
    if expected["thinking"] is not None:  # the finished reasoning is folded: open it as a reader would
        browser.find_element(By.XPATH, "//*[@id='chat']//*[normalize-space(text())='Reasoning']").click()
        time.sleep(0.5)
    shown = words(chat_text(browser))
    assert words(format_question(clip.question, clip.choices)) in shown
    # The reasoning (each CoTA section's text, under a heading) and the answer, as the pipeline wrote them (the page
    # shows an answer cut at the length limit too, before saying so).
    written = parse_response(expected["text"])
    assert written["thinking"] or written["answer"]
    for part in [*re.split(r"</?\w+>", written["thinking"] or ""), written["answer"] or ""]:
        assert words(part)[:60] in shown
    if expected["answer"] is None:
        assert words("reached the length limit") in shown

    screenshot = Path(os.environ.get("WEB_APP_SCREENSHOT") or tmp_path / "web_app.png")
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    assert "follow-up" in ask(browser, "Are you sure?")  # the same clip, not uploaded again
    answer = words(parse_response(follow_up["text"])["answer"] or follow_up["text"])[:60]
    try:  # the status and the chat are separate page updates: give the chat a moment to catch up on a busy machine
        WebDriverWait(browser, 60).until(lambda b: answer in words(chat_text(b)))
    except TimeoutException:
        pass  # the assertions below say what is shown instead
    shown = words(chat_text(browser))
    assert words("Are you sure?") in shown
    assert answer in shown


def test_bad_input_is_explained_in_the_page(server, browser, tmp_path):
    open_app(browser, server)
    assert "Record or upload a clip first" in ask(browser, "What is it?")

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are notes, not sound\n" * 20)
    browser.find_element(By.CSS_SELECTOR, "#clip input[type=file]").send_keys(str(not_audio))
    WebDriverWait(browser, 90).until(lambda b: "notes" in (b.find_element(By.ID, "clip").text + b.page_source))
    assert "Could not read notes.wav as audio" in ask(browser, "What is it?")

    open_app(browser, server)
    long = tmp_path / "lecture.wav"
    soundfile.write(long, np.zeros(20 * 60 * 1000, dtype=np.int16), 1000)  # 20 minutes, a small file
    upload(browser, long)
    assert "The clip is 20.0 minutes long" in ask(browser, "What is it?")
    assert "Traceback" not in browser.page_source


def test_answer_endpoint_through_gradio_client(server, checkpoint, tmp_path):
    """The app's one public endpoint, `/answer(audio, question, choices)`, gives the pipeline's thinking, answer and
    choice; bad input raises the page's sentence; the chat's own events are private."""
    clip = generate_clip("higher_tone", seed=1)
    wav = tmp_path / "tones.wav"
    soundfile.write(wav, clip.waveform, clip.sampling_rate)
    pipe = load_pipeline(str(checkpoint))
    expected = pipe(conversation(format_question(clip.question, clip.choices), system_prompt=None, audio=str(wav)),
                    choices=clip.choices, **GENERATION)

    client = Client(server, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/answer"] and not api["unnamed_endpoints"]
    parameters = api["named_endpoints"]["/answer"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["audio", "question", "choices"]

    result = client.predict(handle_file(str(wav)), clip.question, clip.choices, api_name="/answer")
    assert {k: result[k] for k in ("thinking", "answer", "choice")} == \
        {k: expected[k] for k in ("thinking", "answer", "choice")}
    # The whole output, read without the length rule (a tiny random model rarely ends its answer in 12 tokens).
    got, wanted = parse_response(result["text"]), parse_response(expected["text"])
    assert words(wanted["answer"] or wanted["thinking"] or "")
    parts = ("thinking", "answer")
    assert [words(got[k] or "") for k in parts] == [words(wanted[k] or "") for k in parts]
    assert set(client.predict(handle_file(str(wav)), "What is it?", [], api_name="/answer")) == {
        "thinking", "answer", "choice", "text"}
    with pytest.raises(AppError, match="needs 2 to 6 choices"):
        client.predict(handle_file(str(wav)), clip.question, ["one"], api_name="/answer")
    with pytest.raises(AppError, match="Record or upload a clip first"):
        client.predict(None, clip.question, [], api_name="/answer")


def test_one_decoding_default_in_process_and_on_a_server():
    """Greedy on both backends unless `--sample` (then the checkpoint's sampling settings on both): a server left to
    vLLM's defaults samples at temperature 1 where the pipeline would decode greedily."""
    from tinygiant.serving.model_source import load_app

    app = load_app()
    for argv, sampled in (([], False), (["--sample"], True)):
        options = app.generation_options(app.build_parser().parse_args(argv))
        in_process = app.PipelineBackend(pipe=None, call_kwargs=options)
        on_server = app.ServerBackend("http://127.0.0.1:9/v1", model="served", call_kwargs=options, api_key="none")
        assert in_process.call_kwargs["do_sample"] is sampled
        assert ("temperature" not in on_server.request) is sampled
        if not sampled:
            assert on_server.request["temperature"] == 0.0
