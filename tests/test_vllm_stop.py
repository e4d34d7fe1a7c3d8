"""`tinygiant serve --engine vllm` stops its engine when told, and when it dies.

The signal goes to the `tinygiant` process alone, as systemd, `docker stop`, `timeout` or a job runner send it (not to
its process group, as a terminal's Ctrl-C does). Afterwards the server's port must be closed and none of the processes
that ran under `tinygiant` (vLLM's API server, its engine core, ...) may be left. SIGKILL cannot be forwarded: there
the kernel's parent-death signal must stop the engine.

The first test runs real vLLM servers. The second runs every signal against a stand-in for `vllm` (`TINYGIANT_VLLM`
names the command): a process that starts a child, as vLLM starts its engine core, and on a signal writes down which
one, takes a second to shut down, then ends its child and itself. So it checks that the signal that reached the engine
is the one sent, and that `tinygiant` was still waiting while the engine shut down.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_vllm import TEST_FLAGS, free_port

ROOT = Path(__file__).resolve().parents[1]


def process_table():
    """`{pid: (parent pid, start time, state)}` of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19], fields[0])
    return table


def descendants(pid):
    """`{(pid, start time)}` of the live processes below `pid`; the start time tells a reused pid apart."""
    table, found, frontier = process_table(), set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _, state) in table.items() if parent in frontier and state != "Z"}
        found |= {(child, table[child][1]) for child in frontier}
    return found


def still_running(processes):
    """Those of `processes` (from `descendants`) that are alive: same pid and start time, not a zombie."""
    table = process_table()
    return {(pid, start) for pid, start in processes
            if pid in table and table[pid][1] == start and table[pid][2] != "Z"}


def port_open(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until_up(process, port, log, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tinygiant serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not up within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_to_tinygiant_alone_leaves_no_engine(tiny_dir, tmp_path, signum):
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "tinygiant", "serve", "--engine", "vllm", "--model", str(tiny_dir),
               "--port", str(port), "--no-app", "--no-int8", "--", *TEST_FLAGS]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, port, log)
        engine = descendants(process.pid)
        assert len(engine) >= 2, engine  # vLLM's API server and its engine core at least
        process.send_signal(signum)
        code = process.wait(timeout=120)
        if signum == signal.SIGTERM:  # `tinygiant` exits only once its engine is gone, and says how it ended
            assert not still_running(engine), f"left running: {still_running(engine)}\n{log.read_text()[-3000:]}"
            assert code in (0, 128 + signal.SIGTERM), (code, log.read_text()[-3000:])
        deadline = time.monotonic() + 120  # after SIGKILL the engine stops on its own, with nobody waiting for it
        while (still_running(engine) or port_open(port)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not port_open(port)
        assert not still_running(engine), f"left running: {still_running(engine)}\n{log.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            process.kill()


STAND_IN = """#!{python}
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def stop(signum, frame):
    with open({log!r}, "a") as log:
        log.write(signal.Signals(signum).name + "\\n")
    time.sleep(1)  # a shutdown that takes a while
    child.terminate()
    child.wait()
    sys.exit(0)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, stop)
with open({log!r}, "a") as log:
    log.write(f"up {{os.getpid()}} {{child.pid}}\\n")
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_every_signal_reaches_a_stand_in_engine(tmp_path, signum):
    log, engine_command = tmp_path / "engine.log", tmp_path / "vllm"
    engine_command.write_text(STAND_IN.format(python=sys.executable, log=str(log)))
    engine_command.chmod(0o755)
    command = [sys.executable, "-m", "tinygiant", "serve", "--engine", "vllm", "--model", "unused", "--no-app",
               "--no-int8"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "TINYGIANT_VLLM": str(engine_command)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (log.is_file() and log.read_text().startswith("up")) and time.monotonic() < deadline:
            time.sleep(0.1)
        engine = descendants(process.pid)
        assert len(engine) == 2, (engine, log.read_text() if log.is_file() else "no engine")
        process.send_signal(signum)
        code = process.wait(timeout=60)
        if signum != signal.SIGKILL:  # forwarded, and waited for
            assert not still_running(engine)
            assert code == 0
            assert log.read_text().splitlines()[1:] == [signal.Signals(signum).name]
        deadline = time.monotonic() + 30
        while still_running(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not still_running(engine)
        if signum == signal.SIGKILL:  # the kernel's parent-death signal
            assert log.read_text().splitlines()[1:] == ["SIGTERM"]
    finally:
        if process.poll() is None:
            process.kill()
