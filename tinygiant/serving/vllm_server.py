"""TinyGiant behind vLLM's OpenAI-compatible server: the command line, and a server that a script can start and stop.

    tinygiant serve --engine vllm --model DIR [--port 8000] [--host 127.0.0.1] [--app-port 7860] [app options]
                    [-- any other `vllm serve` flag]
    tinygiant serve --engine vllm --model DIR --no-app [...]     # the API alone, in the foreground

The first starts the server, then the web app (`app.py --backend`, with the example clips, as `tinygiant serve`) on
it: several users are answered at once, batched by the engine. Options before `--` that are not this command's go to
the app (`--max-new-tokens`, `--sample`, `--system-prompt`, `--examples`, `--concurrency`, ...); the app listens on
`--host` too.

Stopping: SIGTERM, SIGINT (Ctrl-C) and SIGHUP to the `tinygiant` process are sent on to the server (every process of
its session), and `tinygiant` exits only once none of them is left (SIGKILL after `STOP_TIMEOUT` s). If `tinygiant`
dies anyway (SIGKILL, a crash), the kernel sends the server SIGTERM (`PR_SET_PDEATHSIG`, Linux), so no server outlives
it holding its port and memory.

It runs `vllm serve DIR` (from `$TINYGIANT_VLLM`, else `.venv-vllm/bin/vllm` beside this repository, else `vllm` on
the PATH) with what a TinyGiant checkpoint needs: `--trust-remote-code` (its config and audio half are remote code),
`--reasoning-parser tinygiant` (the think block to `reasoning`, the answer to `content`); a conversation that brings
no system turn gets the checkpoint's own, from its chat template, as everywhere else. On a machine without a GPU it
also gives vLLM's CPU backend a KV cache of `$VLLM_CPU_KVCACHE_SPACE` GB (default 4), on a small machine (up to 4
cores) binds its worker to every core (`server_environment`), and, where that is faster
(`int8_tinygiant.w8a8_encoders_pay_off`: a CPU without AMX), runs the frozen encoders' linear layers as int8 with int8
activations (`--hf-overrides '{"int8_encoders": true}'`, the plugin's setting; `--no-int8` keeps them float, as
`VllmServer` does unless told).

vLLM itself lives in its own environment (install.sh makes `.venv-vllm/`): it pins an older transformers than this
project needs, and talks to the tools here only over HTTP.
"""

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from int8_tinygiant import w8a8_encoders_pay_off

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO_LIMIT = 8  # audios in one prompt: each is N = 300 tokens for the full-size model
SMALL_MACHINE_CPUS = 4  # up to this many cores, vLLM's CPU worker gets them all (`server_environment`)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_TIMEOUT = 60  # seconds a stopping server gets before SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def vllm_executable() -> str:
    """The `vllm` command that has the TinyGiant plugin (see the module docstring for the order it is looked up in)."""
    if os.environ.get("TINYGIANT_VLLM"):
        return os.environ["TINYGIANT_VLLM"]
    local = ROOT / ".venv-vllm" / "bin" / "vllm"
    if local.is_file():
        return str(local)
    found = shutil.which("vllm")
    if found is None:
        raise FileNotFoundError("no vLLM found: run install.sh (it makes .venv-vllm/), set TINYGIANT_VLLM to a `vllm` "
                                "command, or `pip install vllm ./vllm_plugin` in an environment on the PATH")
    return found


def serve_command(model: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
                  audio_limit: int = DEFAULT_AUDIO_LIMIT, extra_args: Sequence[str] = (),
                  int8_encoders: bool = False) -> list[str]:
    """The `vllm serve` command line for a TinyGiant checkpoint folder or Hub repo."""
    settings = ["--hf-overrides", json.dumps({"int8_encoders": True})] if int8_encoders else []
    return [
        vllm_executable(), "serve", str(model),
        "--trust-remote-code",
        "--reasoning-parser", "tinygiant",
        "--limit-mm-per-prompt", json.dumps({"audio": audio_limit}),
        "--host", host, "--port", str(port),
        *settings,
        *extra_args,
    ]


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    cpus = os.cpu_count() or 1
    if cpus <= SMALL_MACHINE_CPUS and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # vLLM's CPU backend keeps one core for its scheduler process and binds the worker to the rest: on 2 cores,
        # half the machine. Measured on 2 cores (full-size model, one request at a time): 11-13 decoded tokens/s with
        # both bound, at most 7.8 in vLLM's log with one; the scheduler mostly waits, so it can share them.
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{cpus - 1}"
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


def dies_with_this_process() -> Callable[[], None]:
    """A `preexec_fn`: in the server's process, between fork and exec, it asks the kernel for SIGTERM when this process
    dies, however it dies (`PR_SET_PDEATHSIG`).

    prctl is looked up here, in the parent, so that the child only calls it. The signal comes when the thread that
    started the server exits, so servers are started from the main thread. Where there is no prctl (not Linux),
    nothing is set up, and only the forwarded signals stop the server.
    """
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    parent = os.getpid()

    def die_with_parent() -> None:
        if prctl is None:
            return
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return die_with_parent


def session_processes(session_id: int) -> list[int]:
    """The live (not zombie) processes of a session, from /proc (Linux); where there is none, `killpg(session_id,
    0)` stands in: the session's leader is its process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(session_id, 0)
        except ProcessLookupError:
            return []
        return [session_id]
    found = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state ppid pgrp session
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[3]) == session_id:
            found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def forwarding_signals(server: "VllmServer") -> Iterator[None]:
    """While inside: SIGTERM, SIGINT and SIGHUP are sent on to `server`'s session; the first also raises
    `KeyboardInterrupt` in the main thread, as Ctrl-C does, so the app or the wait on the server unwinds. Leaving the
    block stops the server (`VllmServer.stop`: with SIGTERM, unless a signal was already sent on); signals that come
    meanwhile are only sent on."""
    received = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        server.send_signal(signum)
        received.append(signum)
        if len(received) == 1 and not stopping:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        yield
    except KeyboardInterrupt:
        if not received:  # Ctrl-C before the handlers were in place, or raised by the app itself
            raise
    finally:
        stopping = True
        try:
            server.stop(None if received else signal.SIGTERM)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class VllmServer:
    """A `vllm serve` process for a TinyGiant checkpoint, up once `/health` answers; a context manager.

        with VllmServer("runs/tiny", port=8011, extra_args=["--dtype", "float32"]) as server:
            openai.OpenAI(base_url=server.url, api_key="none")...

    Its output goes to `log_path` (or, without one, to this process's own), so a failed start can be read there;
    `start` raises with the log's last lines if the server exits or is not up within `timeout` seconds. The server
    runs in a session of its own, so that `stop` reaches every process vLLM spawns, and dies with this process
    (`dies_with_this_process`).
    """

    def __init__(self, model, host="127.0.0.1", port=8000, extra_args=(), log_path=None, timeout=600, env=None,
                 audio_limit=DEFAULT_AUDIO_LIMIT, plain=False, int8_encoders=False):
        # `plain=True`: only `vllm serve MODEL --trust-remote-code --reasoning-parser tinygiant` and `extra_args`, the
        # command a user types by hand (no default system prompt, vLLM's own audio limit).
        self.command = (
            [vllm_executable(), "serve", str(model), "--trust-remote-code", "--reasoning-parser", "tinygiant",
             "--host", host, "--port", str(port), *extra_args]
            if plain else serve_command(model, host, port, audio_limit, extra_args, int8_encoders)
        )
        self.base = f"http://{host}:{port}"
        self.url = f"{self.base}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.timeout = timeout
        self.env = {**server_environment(), **(env or {})}
        self.process = None

    def launch(self) -> "VllmServer":
        """Start the process, without waiting for it to answer."""
        log = open(self.log_path, "wb") if self.log_path else None
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT if log else None,
                                        env=self.env, start_new_session=True, preexec_fn=dies_with_this_process())
        if log:
            log.close()  # the child holds its own copy
        return self

    def start(self) -> "VllmServer":
        """Start the process and wait until it answers."""
        self.launch()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vllm serve was not up within {self.timeout} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        if not (self.log_path and self.log_path.is_file()):
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def send_signal(self, signum: int) -> None:
        """Send `signum` to every process of the server's session."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def gone(self) -> bool:
        """Whether no process of the server's session is left (the server itself reaped)."""
        if self.process is None:
            return True
        return self.process.poll() is not None and not session_processes(self.process.pid)

    def stop(self, signum: int | None = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        """Send `signum` (if any) to the server's session and return once none of its processes is left (SIGKILL
        after `timeout` s)."""
        if signum is not None:
            self.send_signal(signum)
        deadline = time.monotonic() + timeout
        while not self.gone():
            if time.monotonic() > deadline:
                self.send_signal(signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)

    def serve_in_foreground(self) -> int:
        """Run the server until it exits or this process is told to stop (see `forwarding_signals`); its exit code."""
        self.launch()
        with forwarding_signals(self):
            self.process.wait()
        code = self.process.returncode
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only `--engine vllm` has (beside `--model`, `--host`, `--port` and `--no-int8`, which the app has
    too); `tinygiant serve --help` shows them with the app's."""
    parser.add_argument("--engine", choices=["vllm"], help="run the model on a vLLM server (default: in process)")
    parser.add_argument("--audio-limit", type=int, default=DEFAULT_AUDIO_LIMIT, help="audios in one prompt")
    parser.add_argument("--app-port", type=int, default=7860, help="the web app's port")
    parser.add_argument("--no-app", action="store_true", help="run the server alone")
    parser.add_argument("--log", help="with the app: the server's output goes to this file (default: vllm-server.log "
                        "in $TINYGIANT_CACHE, ~/.cache/tinygiant)")


def main(argv: Sequence[str] | None = None, run_app: Callable[[list[str]], object] | None = None) -> int:
    """`tinygiant serve --engine vllm`: the server and the web app on it, or (`--no-app`) the server in the foreground,
    until Ctrl-C. `run_app` runs the app with the arguments it is given (`tinygiant.serving.web_app.main` passes
    itself, so that the app's module depends on this one and not back)."""
    argv = list(argv or [])
    vllm_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="tinygiant serve --engine vllm", description=__doc__.splitlines()[0],
                                     epilog="Other options before `--` go to the app (see `tinygiant serve --help`); "
                                     "those after it, to `vllm serve`.")
    parser.add_argument("--model", required=True, help="a TinyGiant checkpoint folder or Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="where the server and the app listen")
    parser.add_argument("--port", type=int, default=8000, help="the server's port")
    parser.add_argument("--no-int8", action="store_true", help="keep the frozen encoders float on a CPU")
    add_engine_arguments(parser)
    args, app_args = parser.parse_known_args(argv)
    int8_encoders = not args.no_int8 and w8a8_encoders_pay_off()
    if args.no_app:
        if app_args:
            parser.error(f"unknown options {app_args} (options for `vllm serve` go after `--`)")
        server = VllmServer(args.model, args.host, args.port, vllm_args, audio_limit=args.audio_limit,
                            int8_encoders=int8_encoders)
        print(" ".join(server.command[:3]), "...", file=sys.stderr, flush=True)
        code = server.serve_in_foreground()
        if code:
            raise SystemExit(code)  # the server's own exit code
        return 0

    if run_app is None:
        parser.error("the app on the server starts through `tinygiant serve --engine vllm`; --no-app runs the server "
                     "alone")
    from tinygiant.serving.model_source import cache_dir

    log = Path(args.log) if args.log else cache_dir() / "vllm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = VllmServer(args.model, args.host, args.port, vllm_args, log_path=log, audio_limit=args.audio_limit,
                        int8_encoders=int8_encoders)
    print(f"starting vLLM on {server.base} (its log: {log}) ...", file=sys.stderr, flush=True)
    with forwarding_signals(server):
        server.start()
        run_app([*app_args, "--backend", server.url, "--host", args.host, "--port", str(args.app_port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
