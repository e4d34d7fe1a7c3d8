"""TinyGiant behind vLLM's OpenAI-compatible server: the command line, and a server that a script can start and stop.

    tinygiant serve --engine vllm --model DIR [--port 8000] [--host 127.0.0.1] [--app-port 7860] [app options]
                    [-- any other `vllm serve` flag]
    tinygiant serve --engine vllm --model DIR --no-app [...]     # the API alone, in the foreground

The first starts the server, then the web app (`app.py --backend`, with the example clips, as `tinygiant serve`) on
it: several users are answered at once, batched by the engine. Options before `--` that are not this command's go to
the app (`--max-new-tokens`, `--greedy`, `--system-prompt`, `--examples`, `--concurrency`, ...); the app listens on
`--host` too. Stopping the app (Ctrl-C, SIGTERM) stops the server.

It runs `vllm serve DIR` (from `$TINYGIANT_VLLM`, else `.venv-vllm/bin/vllm` beside this repository, else `vllm` on
the PATH) with what a TinyGiant checkpoint needs: `--trust-remote-code` (its config and audio half are remote code),
`--reasoning-parser tinygiant` (the think block to `reasoning`, the answer to `content`) and the default system prompt
(`parsing_tinygiant.SYSTEM_PROMPT`, the pipeline's) for conversations that bring none. On a machine without a GPU it
also gives vLLM's CPU backend a KV cache of `$VLLM_CPU_KVCACHE_SPACE` GB (default 4), on a small machine (up to 4
cores) binds its worker to every core (`server_environment`), and, where that is faster
(`int8_tinygiant.w8a8_encoders_pay_off`: a CPU without AMX), runs the frozen encoders' linear layers as int8 with int8
activations (`TINYGIANT_VLLM_INT8_ENCODERS=1`, the plugin's switch; `--no-int8` keeps them float, as `VllmServer` does
unless told).

vLLM itself lives in its own environment (install.sh makes `.venv-vllm/`): it pins an older transformers than this
project needs, and talks to the tools here only over HTTP.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from int8_tinygiant import w8a8_encoders_pay_off
from parsing_tinygiant import SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO_LIMIT = 8  # audios in one prompt: each is N = 300 tokens for the full-size model
SMALL_MACHINE_CPUS = 4  # up to this many cores, vLLM's CPU worker gets them all (`server_environment`)


def vllm_executable():
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


def serve_command(model, host="127.0.0.1", port=8000, audio_limit=DEFAULT_AUDIO_LIMIT, extra_args=()):
    """The `vllm serve` command line for a TinyGiant checkpoint folder or Hub repo."""
    return [
        vllm_executable(), "serve", str(model),
        "--trust-remote-code",
        "--reasoning-parser", "tinygiant",
        "--default-chat-template-kwargs", json.dumps({"default_system_prompt": SYSTEM_PROMPT}),
        "--limit-mm-per-prompt", json.dumps({"audio": audio_limit}),
        "--host", host, "--port", str(port),
        *extra_args,
    ]


def server_environment(int8_encoders=False):
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    cpus = os.cpu_count() or 1
    if cpus <= SMALL_MACHINE_CPUS and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # vLLM's CPU backend keeps one core for its scheduler process and binds the worker to the rest: on 2 cores,
        # half the machine. Measured on 2 cores (full-size model, one request at a time): 11-13 decoded tokens/s with
        # both bound, at most 7.8 in vLLM's log with one; the scheduler mostly waits, so it can share them.
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{cpus - 1}"
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if int8_encoders:
        env["TINYGIANT_VLLM_INT8_ENCODERS"] = "1"
    return env


class VllmServer:
    """A `vllm serve` process for a TinyGiant checkpoint, up once `/health` answers; a context manager.

        with VllmServer("runs/tiny", port=8011, extra_args=["--dtype", "float32"]) as server:
            openai.OpenAI(base_url=server.url, api_key="none")...

    Its output goes to `log_path` (or is discarded), so a failed start can be read there; `start` raises with the
    log's last lines if the server exits or is not up within `timeout` seconds.
    """

    def __init__(self, model, host="127.0.0.1", port=8000, extra_args=(), log_path=None, timeout=600, env=None,
                 audio_limit=DEFAULT_AUDIO_LIMIT, plain=False, int8_encoders=False):
        # `plain=True`: only `vllm serve MODEL --trust-remote-code --reasoning-parser tinygiant` and `extra_args`, the
        # command a user types by hand (no default system prompt, vLLM's own audio limit).
        self.command = (
            [vllm_executable(), "serve", str(model), "--trust-remote-code", "--reasoning-parser", "tinygiant",
             "--host", host, "--port", str(port), *extra_args]
            if plain else serve_command(model, host, port, audio_limit, extra_args)
        )
        self.base = f"http://{host}:{port}"
        self.url = f"{self.base}/v1"
        self.log_path = Path(log_path) if log_path else None
        self.timeout = timeout
        self.env = {**server_environment(int8_encoders), **(env or {})}
        self.process = None

    def start(self):
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        # A session of its own, so that stopping it also stops the engine and worker processes vLLM spawns.
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vllm serve was not up within {self.timeout} s:\n{self.log_tail()}")

    def healthy(self):
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines=40):
        if not (self.log_path and self.log_path.is_file()):
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def add_engine_arguments(parser) -> None:
    """The options only `--engine vllm` has (beside `--model`, `--host`, `--port` and `--no-int8`, which the app has
    too); `tinygiant serve --help` shows them with the app's."""
    parser.add_argument("--engine", choices=["vllm"], help="run the model on a vLLM server (default: in process)")
    parser.add_argument("--audio-limit", type=int, default=DEFAULT_AUDIO_LIMIT, help="audios in one prompt")
    parser.add_argument("--app-port", type=int, default=7860, help="the web app's port")
    parser.add_argument("--no-app", action="store_true", help="run the server alone")
    parser.add_argument("--log", help="with the app: the server's output goes to this file (default: vllm-server.log "
                        "in $TINYGIANT_CACHE, ~/.cache/tinygiant)")


def main(argv=None):
    """`tinygiant serve --engine vllm`: the server and the web app on it, or (`--no-app`) the server in the foreground,
    until Ctrl-C."""
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
        command = serve_command(args.model, args.host, args.port, args.audio_limit, vllm_args)
        print(" ".join(command[:3]), "...", file=sys.stderr, flush=True)
        return subprocess.call(command, env=server_environment(int8_encoders))

    from tinygiant import web_app
    from tinygiant.model_source import cache_dir

    # SIGTERM as Ctrl-C, so that `with` below stops the server's whole process group on either.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log = Path(args.log) if args.log else cache_dir() / "vllm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = VllmServer(args.model, args.host, args.port, vllm_args, log_path=log, audio_limit=args.audio_limit,
                        int8_encoders=int8_encoders)
    print(f"starting vLLM on {server.base} (its log: {log}) ...", file=sys.stderr, flush=True)
    with server:
        web_app.main([*app_args, "--backend", server.url, "--host", args.host, "--port", str(args.app_port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
