"""The browser page (`web/`) in headless Chromium: a tiny checkpoint exported with `tinygiant export onnx`, served as
a static site beside the page, answers with the Python ONNX runtime's greedy text, a follow-up question reuses the
clip's encoder output, and a file it cannot decode or a graph the folder lacks is explained in the page.

Set `WEB_ONNX_SCREENSHOT=docs/web_onnx.png` to refresh the screenshot in docs/edge.md (by default it goes to the
test's temporary folder).
"""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import talkative
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from modeling_tinygiant import TinyGiantForConditionalGeneration
from onnx_tinygiant import TinyGiantOnnx
from tinygiant.export.onnx import export_onnx
from tinygiant.hub.publish import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MAX_NEW_TOKENS = 12
QUESTION, CHOICES = "What is making this sound?", ["a dog", "a bell", "rain"]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_dir, processor):
    """The page, its vendored libraries and the exported folder (as `model/`), as a Space would serve them."""
    assert (WEB / "vendor" / "transformers.web.min.js").is_file(), (
        "web/vendor/ is missing: install.sh installs the page's npm packages and runs web/vendor.sh")
    folder = tmp_path_factory.mktemp("site")
    model = talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())
    checkpoint = save_checkpoint(model, processor, folder.parent / f"{folder.name}-checkpoint")
    export_onnx(checkpoint, folder / "model", dtypes=("fp32",))
    for name in ("index.html", "app.js"):
        shutil.copyfile(WEB / name, folder / name)
    (folder / "vendor").symlink_to(WEB / "vendor")
    return folder


@pytest.fixture(scope="module")
def url(site):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html?dtype=fp32&max_new_tokens={MAX_NEW_TOKENS}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "the browser test needs Debian's chromium and chromium-driver (install.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1250"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2.5 s of a tone in noise at 48 kHz: the HTS-AT windows need no resampling, and every mel band has energy, so
    the browser's own resampler (for Whisper's 16 kHz) changes the features only slightly."""
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * 48000)) / 48000
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    soundfile.write(path, 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t)), 48000,
                    subtype="PCM_16")
    return path


def state(browser):
    return browser.execute_script("return document.body.dataset.state")


def wait_for(browser, states, timeout=120):
    WebDriverWait(browser, timeout).until(lambda b: state(b) in states)
    return browser.find_element(By.ID, "status").text


def counter(browser, name):
    return browser.execute_script(f"return window.tinygiant.{name}")


def after(browser, name, action, timeout=120):
    """Do `action`, then wait until the page's counter `name` (clips read, questions answered) moves on; its status."""
    before = counter(browser, name)
    action()
    WebDriverWait(browser, timeout).until(lambda b: counter(b, name) > before)
    return browser.find_element(By.ID, "status").text


def upload(browser, path):
    return after(browser, "clips", lambda: browser.find_element(By.ID, "file").send_keys(str(path)))


def ask(browser, question, choices=()):
    for field, value in (("question", question), ("choices", " | ".join(choices))):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    status = after(browser, "answers", browser.find_element(By.ID, "ask").click)
    assert state(browser) == "done", status
    return browser.execute_script("return document.getElementById('text').textContent")


def test_the_page_answers_as_the_python_runtime(url, site, browser, clip, tmp_path):
    runtime = TinyGiantOnnx.from_pretrained(site / "model")
    greedy = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    browser.get(url)
    assert wait_for(browser, ("ready", "error")) == "Choose or record a clip, then ask."
    assert "Ready" in browser.find_element(By.ID, "load-status").text
    assert upload(browser, clip) == "Clip ready: ask a question."

    text = ask(browser, QUESTION, CHOICES)
    assert text == runtime(str(clip), question=QUESTION, choices=CHOICES, **greedy)["text"]
    follow_up = ask(browser, "Is it loud?")
    assert follow_up == runtime(str(clip), question="Is it loud?", **greedy)["text"]
    assert follow_up != text
    assert counter(browser, "encoderRuns") == 1  # the follow-up reused the encoding
    browser.save_screenshot(os.environ.get("WEB_ONNX_SCREENSHOT") or str(tmp_path / "web_onnx.png"))


def test_an_undecodable_file_is_explained(url, browser, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are not the bytes of a sound")
    browser.get(url)
    wait_for(browser, ("ready", "error"))
    assert upload(browser, bad).startswith("cannot decode audio file notes.wav:")
    assert state(browser) == "error"


def test_a_missing_graph_is_named(url, browser):
    browser.get(url.replace("dtype=fp32", "dtype=q4"))
    status = wait_for(browser, ("error",))
    assert "onnx/audio_encoder_q4.onnx is missing" in status and "tinygiant export onnx" in status
