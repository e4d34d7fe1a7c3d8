"""`tinygiant export {onnx,gguf}`: a checkpoint in the formats other runtimes read.

    tinygiant export onnx MODEL_DIR OUT     # the Hub folder + onnx/ for onnx_tinygiant.py and transformers.js
    tinygiant export gguf MODEL_DIR OUT.gguf [--weights q8_0|bf16]   # the language model for llama.cpp
"""

import importlib
import sys
from pathlib import Path

FORMATS = {"onnx": "tinygiant.export.onnx", "gguf": "tinygiant.export.gguf"}


def main(argv: list[str] | None = None) -> Path | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: tinygiant export {{{','.join(FORMATS)}}} ...\n\n{__doc__}")
        return None
    if not argv or argv[0] not in FORMATS:
        raise SystemExit(f"usage: tinygiant export {{{','.join(FORMATS)}}} ...  (got {argv[:1] or 'nothing'})\n"
                         + __doc__.split("\n\n")[1])
    return importlib.import_module(FORMATS[argv[0]]).main(argv[1:])
