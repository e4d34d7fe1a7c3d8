"""`tinygiant export onnx MODEL_DIR OUT`: a TinyGiant checkpoint as ONNX graphs, for `onnx_tinygiant.TinyGiantOnnx`
(Python without torch) and transformers.js / onnxruntime-web (the page in `web/`).

OUT is the checkpoint's Hub folder (config, processor, tokenizer, chat template, weights, the project's remote code,
`onnx_tinygiant.py` among it) plus `onnx/` with four graphs (see `onnx_tinygiant`): `audio_encoder`, `projector`,
`embed_tokens` and `decoder_model_merged`, each in fp32 and in the variants asked for, named as transformers.js names
them: `_quantized` (int8 weights, onnxruntime's dynamic quantisation: int8 matmuls with activations quantised per
call), `_q4` (4-bit blockwise MatMul weights, `MatMulNBits`, block 32) and `_fp16`. OUT is written beside its place
and moved in at the end, so a killed export leaves no half folder.

Choices the issue leaves open:
- The audio path's data-dependent Python (per-audio `.tolist()` splits, adaptive pooling of a length known only at
  run time) becomes arithmetic on the lengths: pooling is a (audios, N, frames) weight matrix holding
  `adaptive_avg_pool1d`'s bins, and CLAP's per-audio mean a (audios, windows) one. One graph then serves any number
  of windows and audios. `whisper_trim_padding` checkpoints (a differently-sized Whisper input per window) are refused.
- The decoder gives the last position's logits only: that is all generation reads, and a 400-token prompt's full
  logits would be 243 MB for Qwen3's vocabulary.
- Attention is exported in its eager form (plain matmuls and softmax), which every ONNX Runtime build runs.
- Graphs over 2 GB keep their weights in `<name>.onnx_data` beside them (transformers.js's naming).
"""

import argparse
import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from modeling_tinygiant import TinyGiantForConditionalGeneration
from onnx_tinygiant import ONNX_FOLDER, ONNX_PARTS, VARIANTS, onnx_path
from tinygiant.files import leftover_partials, partial_path
from tinygiant.hub.publish import SHIPPED_CODE, _module_file, complete_folder, missing_files

# What a folder needs to be exported: the model's config and weights, and what the processor loads.
CHECKPOINT_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PROTOBUF_LIMIT = 2 * 1024**3  # one ONNX file holds at most 2 GB; larger graphs keep their weights beside it
DEFAULT_DTYPES = ("fp32", "q8", "q4", "fp16")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_checkpoint(folder: Path) -> None:
    """Raise `ValueError` naming what makes `folder` not a TinyGiant checkpoint."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ValueError(f"{folder} is not a TinyGiant checkpoint: it lacks {', '.join(missing)}")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "tinygiant":
        raise ValueError(f"{folder} is not a TinyGiant checkpoint: its config.json has model_type {model_type!r}, "
                         "not 'tinygiant'")


# ---------------------------------------------------------------------------------------------------- the graphs


def pooling_weights(lengths: torch.Tensor, frames_per_window: int, total_frames: int, n: int) -> torch.Tensor:
    """(audios, n, total_frames): row (a, i) averages `adaptive_avg_pool1d`'s bin i of audio a's `lengths[a]` real
    frames, laid out as in `pool_per_audio` (each audio's windows one after another, flattened)."""
    windows = (lengths + frames_per_window - 1) // frames_per_window
    first = (torch.cumsum(windows, 0) - windows) * frames_per_window  # each audio's first frame
    bins = torch.arange(n, device=lengths.device)
    start = first[:, None] + (bins * lengths[:, None]) // n
    end = first[:, None] + ((bins + 1) * lengths[:, None] + n - 1) // n
    frames = torch.arange(total_frames, device=lengths.device)
    inside = (frames >= start[..., None]) & (frames < end[..., None])
    return inside.float() / (end - start)[..., None].float()


def window_means(vectors: torch.Tensor, lengths: torch.Tensor, frames_per_window: int) -> torch.Tensor:
    """(audios, dim): the mean of each audio's window `vectors` (windows, dim), windows in audio order."""
    windows = (lengths + frames_per_window - 1) // frames_per_window
    last = torch.cumsum(windows, 0)
    index = torch.arange(vectors.shape[0], device=lengths.device)
    inside = (index >= (last - windows)[:, None]) & (index < last[:, None])
    return (inside.float() / windows[:, None].float()) @ vectors


class AudioEncoderGraph(nn.Module):
    """`TinyGiantAudioMixin.encode_audio` (eq. 1-3) as one graph: mels of any number of windows and audios in, the
    pooled Whisper and HTS-AT streams (audios, N, dim) and the CLAP vector (audios, dim) out."""

    def __init__(self, model: TinyGiantForConditionalGeneration):
        super().__init__()
        inner, config = model.model, model.config
        self.whisper_encoder, self.htsat_encoder, self.clap_encoder = (
            inner.whisper_encoder, inner.htsat_encoder, inner.clap_encoder)
        self.n, self.whisper_window, self.htsat_window = (
            config.num_audio_tokens, config.whisper_frames_per_window, config.htsat_frames_per_window)

    def forward(self, whisper_input_features: torch.Tensor, clap_input_features: torch.Tensor,
                whisper_lengths: torch.Tensor, htsat_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        whisper = self.whisper_encoder(whisper_input_features).last_hidden_state  # (1)
        htsat = self.htsat_encoder(clap_input_features).last_hidden_state.mean(dim=2).transpose(1, 2)  # (2)
        outputs = tuple(
            pooling_weights(lengths, window, frames.shape[0] * frames.shape[1], self.n) @ frames.flatten(0, 1)
            for frames, lengths, window in ((whisper, whisper_lengths, self.whisper_window),
                                            (htsat, htsat_lengths, self.htsat_window))
        )
        if self.clap_encoder is not None:
            vectors = self.clap_encoder(clap_input_features).pooler_output
            outputs += (window_means(vectors, htsat_lengths, self.htsat_window),)  # (3)
        return outputs


class ProjectorGraph(nn.Module):
    """The query-guided projector (eq. 4-15) on its inputs by name, in `names`' order."""

    def __init__(self, model: TinyGiantForConditionalGeneration, names: list[str]):
        super().__init__()
        self.projector, self.names = model.model.projector, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.projector(**dict(zip(self.names, inputs)))


class EmbedTokensGraph(nn.Module):
    def __init__(self, model: TinyGiantForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class DecoderGraph(nn.Module):
    """Qwen3 and the LM head with an explicit KV cache: (embeddings, mask, positions, past keys and values) ->
    (the last position's logits, present keys and values). One graph for the prompt (an empty past) and each step."""

    def __init__(self, model: TinyGiantForConditionalGeneration):
        super().__init__()
        self.language_model, self.lm_head = model.model.language_model, model.lm_head

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.language_model.config)
        hidden = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                     position_ids=position_ids, cache=cache, use_cache=True).last_hidden_state
        presents = [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]
        return (self.lm_head(hidden[:, -1]), *presents)


def past_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def graphs(model: TinyGiantForConditionalGeneration) -> dict[str, tuple]:
    """For each part: (module, example inputs, input names, output names, dynamic axes by input name).

    Example sizes avoid 0 and 1 and differ from one another, so that no axis is traced as a constant.
    """
    config, text = model.config, model.config.text_config
    d, n = text.hidden_size, config.num_audio_tokens
    dw, dh = config.whisper_config.d_model, config.htsat_config.hidden_size
    mels = config.whisper_config.num_mel_bins
    clap_shape = (1, 1001, config.htsat_config.num_mel_bins)
    audio_inputs = (
        torch.randn(3, mels, 2 * config.whisper_frames_per_window), torch.randn(4, *clap_shape),
        torch.tensor([2 * config.whisper_frames_per_window, 700]), torch.tensor([64, 40]),
    )
    audio_outputs = ["whisper_frames", "htsat_frames"] + (["clap_vector"] if config.use_clap_gate else [])
    audio = (AudioEncoderGraph(model), audio_inputs, ["whisper_input_features", "clap_input_features",
             "whisper_lengths", "htsat_lengths"], audio_outputs,
             {"whisper_input_features": {0: "whisper_windows"}, "clap_input_features": {0: "htsat_windows"},
              "whisper_lengths": {0: "audios"}, "htsat_lengths": {0: "audios"}})

    projector_inputs = {"whisper_frames": torch.randn(2, n, dw), "htsat_frames": torch.randn(2, n, dh)}
    if config.use_intent_query:
        projector_inputs["intent_query"] = torch.randn(2, d)
    if config.use_clap_gate:
        projector_inputs["clap_vector"] = torch.randn(2, config.clap_config.hidden_size)
    names = list(projector_inputs)
    projector = (ProjectorGraph(model, names), tuple(projector_inputs.values()), names, ["audio_embeds"],
                 {name: {0: "audios"} for name in names})

    embed = (EmbedTokensGraph(model), (torch.tensor([[1, 2, 3], [4, 5, 6]]),), ["input_ids"], ["inputs_embeds"],
             {"input_ids": {0: "batch_size", 1: "sequence_length"}})

    batch, steps, past_length = 2, 3, 5
    kv = (batch, text.num_key_value_heads, past_length, text.head_dim)
    past = [torch.randn(kv) for _ in range(2 * text.num_hidden_layers)]
    decoder_inputs = (torch.randn(batch, steps, d), torch.ones(batch, past_length + steps, dtype=torch.long),
                      torch.arange(past_length, past_length + steps).repeat(batch, 1), *past)
    past_axes = {name: {0: "batch_size", 2: "past_sequence_length"}
                 for name in past_names(text.num_hidden_layers, "past_key_values")}
    decoder = (DecoderGraph(model), decoder_inputs,
               ["inputs_embeds", "attention_mask", "position_ids", *past_axes],
               ["logits", *past_names(text.num_hidden_layers, "present")],
               {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                "position_ids": {0: "batch_size", 1: "sequence_length"}, **past_axes})
    return {"audio_encoder": audio, "projector": projector, "embed_tokens": embed, "decoder_model_merged": decoder}


def export_graph(module: nn.Module, example: tuple, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict, path: Path) -> Path:
    """Export `module` with torch's ONNX exporter (`dynamo=True`) to `path` (weights beside it when over 2 GB)."""
    import onnx_ir

    dynamic_shapes = _dynamic_shapes(module, [{axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes.get(name, {})}
                                              for name in input_names])
    with torch.no_grad():
        program = torch.onnx.export(module.eval(), example, dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
    for value in program.model.graph.inputs:  # the exporter's symbolic names (s0, s1, ...) -> the axes' names
        axes = dynamic_axes.get(value.name, {})
        if axes and value.shape is not None:
            value.shape = onnx_ir.Shape([axes.get(i, dim) for i, dim in enumerate(value.shape)])
    weights = sum(t.const_value.nbytes for t in program.model.graph.initializers.values() if t.const_value is not None)
    external = f"{path.name}_data" if weights >= PROTOBUF_LIMIT - 64 * 1024**2 else None
    onnx_ir.save(program.model, path, external_data=external)
    return path


def _dynamic_shapes(module: nn.Module, shapes: list[dict]) -> dict:
    """`torch.export`'s dynamic shapes, keyed by `module.forward`'s parameters (a `*args` one takes the rest)."""
    grouped = {}
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            grouped[parameter.name], shapes = tuple(shapes), []
        else:
            grouped[parameter.name], shapes = shapes[0], shapes[1:]
    return grouped


# ---------------------------------------------------------------------------------------------------- variants


def quantize_q8(source: Path, target: Path) -> None:
    """int8 weights (per tensor), activations quantised per call: onnxruntime's dynamic quantisation."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                     extra_options={"MatMulConstBOnly": True})


def quantize_q4(source: Path, target: Path) -> None:
    """4-bit blockwise (32) symmetric MatMul weights (`MatMulNBits`); the rest stays fp32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(source), block_size=32, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and arithmetic inside, fp32 inputs and outputs (onnxruntime's converter).

    Gelu stays fp32 (with casts around it): onnxruntime 1.32's graph optimiser crashed creating a session for the
    projector with an fp16 Gelu.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True, disable_shape_infer=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Gelu"])
    size = model.ByteSize()
    onnx.save_model(model, target, save_as_external_data=size >= PROTOBUF_LIMIT,
                    location=f"{target.name}_data" if size >= PROTOBUF_LIMIT else None)


CONVERTERS = {"q8": quantize_q8, "q4": quantize_q4, "fp16": convert_fp16}


# ---------------------------------------------------------------------------------------------------- the folder


def export_onnx(model_dir: str | Path, out: str | Path, dtypes: tuple[str, ...] = DEFAULT_DTYPES) -> Path:
    """Write `out`: the checkpoint at `model_dir` as a Hub folder with `onnx/` (fp32 and the other `dtypes`).

    Refuses a folder that is not a TinyGiant checkpoint (naming what is missing). Returns `out`.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_checkpoint(model_dir)
    unknown = sorted(set(dtypes) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown ONNX variant(s) {unknown}; choose from {list(VARIANTS)}")
    if out.resolve() == model_dir.resolve():
        raise ValueError("OUT must be another folder than MODEL_DIR")
    model = TinyGiantForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    if model.config.whisper_trim_padding:
        raise ValueError("checkpoints with whisper_trim_padding=True cannot be exported to ONNX yet (each window would "
                         "need its own Whisper input length)")
    model.set_attn_implementation("eager")

    for leftover in leftover_partials(out):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = partial_path(out)
    try:
        shutil.copytree(model_dir, staging, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(ONNX_FOLDER, ".*", "__pycache__"))
        for name in SHIPPED_CODE:  # the project's code, which the graphs and the ONNX runtime go with
            (staging / name).unlink(missing_ok=True)
            shutil.copyfile(_module_file(name), staging / name)
        if missing_files(staging):  # e.g. a `save_pretrained` folder without a model card
            complete_folder(staging)
        (staging / ONNX_FOLDER).mkdir()
        for part, (module, example, inputs, outputs, axes) in graphs(model).items():
            start = time.perf_counter()
            export_graph(module, example, inputs, outputs, axes, onnx_path(staging, part))
            log(f"exported {part} in {time.perf_counter() - start:.1f} s")
            for dtype in dtypes:
                if dtype != "fp32":
                    start = time.perf_counter()
                    CONVERTERS[dtype](onnx_path(staging, part), onnx_path(staging, part, dtype))
                    log(f"  {dtype} in {time.perf_counter() - start:.1f} s")
        if "fp32" not in dtypes:
            for part in ONNX_PARTS:
                for path in onnx_path(staging, part).parent.glob(f"{part}.onnx*"):
                    path.unlink()
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _link_or_copy(source, target):
    """Hard-link the checkpoint's files (gigabytes of weights) where the file system allows, else copy them."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _replace_folder(staging: Path, out: Path) -> None:
    """Move `staging` to `out` in one rename; an earlier folder at `out` is moved aside first, then removed."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, out)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="tinygiant export onnx", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a TinyGiant checkpoint folder")
    parser.add_argument("out", help="the folder to write (replaced if it exists)")
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES), choices=list(VARIANTS),
                        help="the variants to write (default: all)")
    args = parser.parse_args(argv)
    out = export_onnx(args.model_dir, args.out, tuple(args.dtypes))
    print(f"wrote {out}")
    return out
