#!/usr/bin/env bash
# Set up TinyGiant in ./.venv: PyTorch, the project with its dependencies and test tools, and (as root on Debian or
# Ubuntu) espeak-ng and sox, which the synthetic demo data uses for its speech clips, and chromium with its driver,
# in which the web app's test runs.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null; } \
    || echo "install.sh: espeak-ng/sox not installed; the synthetic data will have no speech task" >&2
  apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "install.sh: chromium not installed; the web app's browser test will fail" >&2
fi
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# The project accepts any torch>=2.4; this pin picks the CPU build here. On a GPU machine, install your CUDA
# build of torch first and drop this line.
.venv/bin/pip install -q torch==2.13.0
# llama-cpp-python compiles llama.cpp for this CPU (about 5 min on 2 cores); only its library is needed.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF}" \
  .venv/bin/pip install -q -e ".[test]"
