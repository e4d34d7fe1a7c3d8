"""Int8 for CPU inference: `quantize_int8(model)` swaps a TinyGiant's linear layers for `Int8Linear`; `load_int8`
does the same while reading a checkpoint, so the float model is never held whole.

Weights are symmetric int8 per output channel. Activations either keep their dtype (`activations="float"`,
weight-only: the pipeline's `int8=True`) or, for inputs of many rows (encoders, prefill), are quantised per token
to int8 too (`activations="int8"`, W8A8: the pipeline's `int8="w8a8"`), so the matmul runs on int8 units (VNNI,
AMX) with int32 accumulation. Decoding (few rows) always uses the weight-only kernel: it is memory-bound, and the
int8 weight already halves its bytes. Remote code: imports only torch (and safetensors / accelerate in `load_int8`).
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many rows the packed weight-only int8 kernel wins (decoding is memory-bound: half the bytes of bf16);
# above it the weight is dequantised for the float matmul, or with int8 activations both go through `torch._int_mm`.
INT8_KERNEL_MAX_ROWS = 16
ACTIVATION_MODES = ("float", "int8")
# Freed float weights are handed back to the OS after about this many bytes (a trim costs a few milliseconds).
TRIM_EVERY_BYTES = 2**26


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), from /proc/cpuinfo (Linux; else False)."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def w8a8_encoders_pay_off() -> bool:
    """Whether W8A8 runs the frozen encoders faster than bf16 here: on a CPU without AMX, yes (VNNI's int8 GEMM beats
    its bf16 GEMM); on one with AMX, no (its bf16 tiles are about as fast as int8, and bf16 skips quantising the
    activations); on a GPU, no (the int8 path is CPU kernels). The measurements behind it: docs/performance.md."""
    return not torch.cuda.is_available() and not cpu_has_amx()


def _quantize_rows(weight):
    """Symmetric per-row (output channel) int8: returns `(int8 weight, scales in the weight's dtype)`.

    Rounds in float32, a few rows at a time: a float32 copy of a whole matrix would be the largest allocation of
    the quantisation (600 MB for Qwen3's embedding table).
    """
    scales = _absmax_rows(weight.detach())[:, 0].float().clamp(min=1e-8) / 127
    qweight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    rows_per_chunk = max(1, 2**22 // weight.shape[1])  # 16 MB of float32
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        qweight[rows] = (weight[rows].detach().float() / scales[rows, None]).round_().clamp_(-127, 127)
    return qweight, scales.to(weight.dtype)


def _absmax_rows(x):
    """Largest magnitude per row, shape (rows, 1). Not `x.abs()`: that would copy the matrix; not `torch.aminmax`:
    on CPU it is several times slower than `amax` and `amin` apart."""
    return torch.maximum(x.amax(-1, keepdim=True), -x.amin(-1, keepdim=True))


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row (token) int8 of a 2-D activation: `(int8 rows, float32 scales of shape (rows, 1))`.

    The range is [-127, 127], not [-128, 127], so that the int8 product of two extremes never overflows its sign.
    """
    scales = _absmax_rows(x).float().clamp_(min=1e-8) / 127
    return (x.float() / scales).round_().clamp_(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    """Int8 `nn.Linear` for inference: int8 weights with per-output-channel scales.

    Few rows (decoding) use PyTorch's weight-only CPU kernel `torch._weight_int8pack_mm`. Many rows (encoders,
    prefill) dequantise the weight for the float matmul, or with `activations="int8"` quantise each row of the input
    and multiply int8 by int8 into int32 (`torch._int_mm`), then rescale by both scales. Other devices dequantise.
    """

    def __init__(self, qweight, scales, bias=None, activations="float"):
        super().__init__()
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"activations must be one of {ACTIVATION_MODES}, not {activations!r}")
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.activations = activations
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str = "float") -> "Int8Linear":
        return cls(*_quantize_rows(linear.weight), linear.bias, activations=activations)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={self.activations}"

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

    @property
    def weight(self) -> torch.Tensor:
        # The float weight, for exports (GGUF) that need it. It allocates: never read it for a dtype.
        return self.dequantize(self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        # The kernel gives wrong results unless in_features is a multiple of 16 (true of every full-size layer).
        if x.device.type == "cpu" and rows <= INT8_KERNEL_MAX_ROWS and self.in_features % 16 == 0:
            out = torch._weight_int8pack_mm(x.reshape(rows, self.in_features).contiguous(), self.qweight,
                                            self.scales.to(x.dtype)).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        if self.activations == "int8" and x.device.type == "cpu":
            qx, row_scales = quantize_activations(x.reshape(rows, self.in_features))
            accumulated = torch._int_mm(qx, self.qweight.t())  # int32: 127 * 127 * in_features stays below 2**31
            # In place: each pass over the (rows, out) product costs about as much as quantising the input.
            out = accumulated.float().mul_(row_scales).mul_(self.scales.float()).to(x.dtype).reshape(*x.shape[:-1], -1)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8Embedding(nn.Module):
    """Int8 embedding table sharing its int8 rows and scales with an `Int8Linear` LM head (Qwen3-0.6B ties them)."""

    def __init__(self, head, dtype, padding_idx=None):
        super().__init__()
        self.head, self.dtype, self.padding_idx = head, dtype, padding_idx

    @property
    def weight(self) -> torch.Tensor:
        # For code that reads the embedding table (e.g. the placeholder mask without input_ids).
        return self.head.dequantize(self.dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head.qweight[input_ids].to(self.dtype) * self.head.scales[input_ids, None].to(self.dtype)


@torch.no_grad()
def quantize_int8(model: nn.Module, modules: list[nn.Module] | None = None, activations: str = "float") -> nn.Module:
    """Replace the `nn.Linear` layers of `model` (a `TinyGiantForConditionalGeneration`) with `Int8Linear`, in place.

    Covers the three encoders, the projector and the LLM; the tied embedding / LM head become one int8 table.
    Convolutions, norms and `nn.MultiheadAttention`'s fused projections stay in their dtype. `modules` optionally
    limits it to some submodules (e.g. `[model.model.language_model]`). `activations` is `"float"` (weight-only) or
    `"int8"` (W8A8 for many-row inputs); on an already quantised model it only switches that mode. For inference
    only (no training, no saving); returns the model.

    Memory: each float weight is dropped as soon as its int8 copy exists, so the process ends up holding about the
    int8 size instead of float + int8, but the peak is the float model's; `load_int8` avoids that peak too.
    """
    lm_head = getattr(model, "lm_head", None)
    for target in modules if modules is not None else [model]:
        for module in target.modules():
            if isinstance(module, Int8Linear):
                module.activations = activations
        # Exactly `nn.Linear`: `nn.MultiheadAttention`'s out_proj is a subclass, and attention reads its weight
        # directly. Names, not modules: a list holding the layers would keep every float weight alive to the end.
        names = [name for name, module in target.named_modules() if type(module) is nn.Linear and module is not lm_head]
        freed_bytes = 0
        for name in names:
            linear = target.get_submodule(name)
            _set_submodule(target, name, Int8Linear.from_linear(linear, activations))
            freed_bytes += linear.weight.nbytes
            del linear  # its float weight is freed here
            # Without a trim now and then the heap fragments and grows; trimming after every layer costs seconds.
            if freed_bytes > TRIM_EVERY_BYTES:
                _release_freed_memory()
                freed_bytes = 0
    if modules is None and type(lm_head) is nn.Linear:
        embeddings = model.get_input_embeddings()
        tied = lm_head.weight is embeddings.weight
        model.lm_head = Int8Linear.from_linear(lm_head, activations)
        if tied:
            model.model.language_model.embed_tokens = Int8Embedding(model.lm_head, embeddings.weight.dtype,
                                                                    embeddings.padding_idx)
        del lm_head, embeddings  # the float table goes now, not when this function returns
    _release_freed_memory()
    audio_cache = getattr(getattr(model, "model", None), "audio_cache", None)
    if audio_cache is not None:  # its entries came from the encoders' previous weights or activation mode
        audio_cache.clear()
    return model


@torch.no_grad()
def load_int8(model_class: type, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
              activations: str = "float") -> nn.Module:
    """`quantize_int8(model_class.from_pretrained(path, dtype=dtype), activations=activations)` without ever holding
    the float model: the model is built without parameters (accelerate's `init_empty_weights`; buffers are real),
    then each tensor is read from the checkpoint's safetensors on its own and each linear weight quantised as read.

    The peak is the int8 model plus one float tensor. The result equals quantise-after-load; only local folders
    with `model.safetensors` or a sharded `model.safetensors.index.json` are read (download a Hub repo first, e.g.
    with `huggingface_hub.snapshot_download`). `model_class` is the checkpoint's `TinyGiantForConditionalGeneration`.
    """
    import json
    from pathlib import Path

    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    if not (path / files[0]).exists():
        raise FileNotFoundError(f"{path} has no model.safetensors (nor an index of shards) to load in int8")
    config = model_class.config_class.from_pretrained(path)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # as `from_pretrained(dtype=...)`: float32 buffers (rotary) stay float32
    try:
        with init_empty_weights(include_buffers=False):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    tied = config.tie_word_embeddings
    linears = {name for name, module in model.named_modules() if type(module) is nn.Linear}
    embed_name = "model.language_model.embed_tokens"
    read_bytes = 0
    for file in files:
        with open(path / file, "rb") as stream:
            header = _safetensors_header(stream)
            # Biases before weights: an `Int8Linear` takes its linear's bias when it replaces it.
            for key in sorted(header, key=lambda k: k.endswith(".weight")):
                module_name, _, tensor_name = key.rpartition(".")
                tensor = _read_tensor(stream, header[key])
                tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
                if tensor_name == "weight" and module_name in linears:
                    linear = model.get_submodule(module_name)
                    bias = linear.bias if linear.bias is not None and linear.bias.device.type != "meta" else None
                    _set_submodule(model, module_name, Int8Linear(*_quantize_rows(tensor), bias, activations))
                elif key == f"{embed_name}.weight" and tied:
                    model.lm_head = Int8Linear(*_quantize_rows(tensor), None, activations)
                    padding_idx = model.get_submodule(embed_name).padding_idx
                    _set_submodule(model, embed_name, Int8Embedding(model.lm_head, dtype, padding_idx))
                elif not (tied and key == "lm_head.weight"):
                    set_module_tensor_to_device(model, key, "cpu", value=tensor)
                read_bytes += tensor.nbytes
                del tensor
                # glibc keeps the freed float tensors in its heap: without a trim now and then, resident memory
                # climbs to about the float model's size during the load.
                if read_bytes > TRIM_EVERY_BYTES:
                    _release_freed_memory()
                    read_bytes = 0
    missing = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if missing:
        raise ValueError(f"the checkpoint in {path} lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    model.requires_grad_(False)
    _release_freed_memory()
    return model


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(stream):
    """The tensor entries of a safetensors file (`{name: {"dtype", "shape", "data_offsets"}}`), offsets made absolute.

    Tensors are then read with plain file reads, not safetensors' memory map: the map's pages would count in the
    process's resident memory until the file is closed, about the whole float checkpoint at the end.
    """
    import json
    import struct

    (length,) = struct.unpack("<Q", stream.read(8))
    header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    for entry in header.values():
        entry["data_offsets"] = [8 + length + offset for offset in entry["data_offsets"]]
    return header


def _read_tensor(stream, entry):
    start, end = entry["data_offsets"]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"unsupported safetensors dtype {entry['dtype']}")
    tensor = torch.empty(end - start, dtype=torch.uint8)
    stream.seek(start)
    stream.readinto(memoryview(tensor.numpy()))
    return tensor.view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _set_submodule(root, name, module):
    parent_name, _, child_name = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child_name, module)


def _release_freed_memory():
    """Hand the freed float weights back to the OS: glibc keeps freed heap blocks, so RSS would not drop otherwise."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass

