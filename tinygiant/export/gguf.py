"""`tinygiant export gguf MODEL_DIR OUT.gguf`: a checkpoint's language model as a GGUF for llama.cpp.

The writer itself, `llamacpp_tinygiant.export_gguf`, ships with the checkpoint: the pipeline's `llama_cpp=True`
writes the GGUF when it loads, from remote code that cannot import this package.
"""

import argparse
from pathlib import Path

import torch

from llamacpp_tinygiant import GGUF_WEIGHTS, export_gguf
from modeling_tinygiant import TinyGiantForConditionalGeneration
from tinygiant.export.onnx import check_checkpoint


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="tinygiant export gguf", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a TinyGiant checkpoint folder")
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument("--weights", default="q8_0", choices=GGUF_WEIGHTS)
    args = parser.parse_args(argv)
    check_checkpoint(Path(args.model_dir))
    model = TinyGiantForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32)
    path = export_gguf(model, args.out, weights=args.weights)
    print(f"wrote {path}")
    return path
