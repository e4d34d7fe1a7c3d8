"""The test tiers: tests/conftest.py marks each test by what it runs, so that `pytest -m "not slow"` leaves out
servers, browsers and other processes without anyone listing them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Collects the given tests and prints each one's markers.
COLLECT = """
import json, sys, pytest
class Marks:
    def pytest_collection_finish(self, session):
        self.marks = {item.nodeid: sorted({m.name for m in item.iter_markers()} - {"parametrize"})
                      for item in session.items}
marks = Marks()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[marks])
print(json.dumps(marks.marks))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def marks():
    files = ["tests/test_web_app.py", "tests/test_train_sft.py", "tests/test_vllm.py", "tests/test_files.py"]
    run = subprocess.run([sys.executable, "-c", COLLECT, *files], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_backend_parameter_marks_only_its_own_run(marks):
    in_process = marks["tests/test_web_app.py::test_answer_endpoint_through_gradio_client[in-process]"]
    on_vllm = marks["tests/test_web_app.py::test_answer_endpoint_through_gradio_client[vllm]"]
    assert "vllm" not in in_process and {"subprocess", "slow"} <= set(in_process)  # the app runs in a process
    assert {"vllm", "subprocess", "slow"} <= set(on_vllm)
    browser = [m for test, m in marks.items() if "test_web_app.py::test_ask_and_follow_up_in_the_browser" in test]
    assert len(browser) == 2 and all({"browser", "slow"} <= set(m) for m in browser)


def test_servers_and_two_process_training_are_slow_and_plain_tests_are_quick(marks):
    assert {"vllm", "slow"} <= set(marks["tests/test_vllm.py::test_default_system_prompt_applies"])  # the server
    ddp = [m for test, m in marks.items() if "test_train_sft.py::test_ddp" in test]
    assert ddp and all({"ddp", "subprocess", "slow"} <= set(m) for m in ddp)
    files = [m for test, m in marks.items() if test.startswith("tests/test_files.py")]
    assert files and all(m == [] for m in files)
