"""Int8 weights for CPU inference: `quantize_int8(model)` swaps a TinyGiant's linear layers for `Int8Linear`.

Weight-only, symmetric, per output channel; activations keep their dtype. Used by the pipeline's `int8=True`
(`pipeline("audio-reasoning", ..., int8=True)`). Remote code: imports only torch.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many rows the packed int8 kernel wins (decoding is memory-bound: half the bytes of bf16); above it the
# weight is dequantised and the bf16 matmul (AMX on recent x86) is faster than the int8 kernel.
INT8_KERNEL_MAX_ROWS = 16


def _quantize_rows(weight):
    """Symmetric per-row (output channel) int8: returns `(int8 weight, scales in the weight's dtype)`.

    Rounds in float32, a few rows at a time: a float32 copy of a whole matrix would be the largest allocation of
    the quantisation (600 MB for Qwen3's embedding table).
    """
    low, high = torch.aminmax(weight.detach(), dim=1)  # not `weight.abs()`: that would copy the whole matrix
    scales = torch.maximum(high, -low).float().clamp(min=1e-8) / 127
    qweight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    rows_per_chunk = max(1, 2**22 // weight.shape[1])  # 16 MB of float32
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        qweight[rows] = (weight[rows].detach().float() / scales[rows, None]).round_().clamp_(-127, 127)
    return qweight, scales.to(weight.dtype)


class Int8Linear(nn.Module):
    """Weight-only int8 `nn.Linear` for inference: int8 weights with per-output-channel scales, activations unchanged.

    Few rows (decoding) use PyTorch's CPU kernel `torch._weight_int8pack_mm`; many rows (encoders, prefill) and other
    devices dequantise the weight and use the ordinary matmul.
    """

    def __init__(self, qweight, scales, bias=None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear):
        return cls(*_quantize_rows(linear.weight), linear.bias)

    def dequantize(self, dtype):
        return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

    @property
    def weight(self):  # the float weight, for code that reads `linear.weight` (e.g. its dtype)
        return self.dequantize(self.scales.dtype)

    def forward(self, x):
        rows = x.numel() // self.in_features
        # The kernel gives wrong results unless in_features is a multiple of 16 (true of every full-size layer).
        if x.device.type == "cpu" and rows <= INT8_KERNEL_MAX_ROWS and self.in_features % 16 == 0:
            out = torch._weight_int8pack_mm(x.reshape(rows, self.in_features).contiguous(), self.qweight,
                                            self.scales.to(x.dtype)).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8Embedding(nn.Module):
    """Int8 embedding table sharing its int8 rows and scales with an `Int8Linear` LM head (Qwen3-0.6B ties them)."""

    def __init__(self, head, dtype, padding_idx=None):
        super().__init__()
        self.head, self.dtype, self.padding_idx = head, dtype, padding_idx

    @property
    def weight(self):  # for code that reads the embedding table (e.g. the placeholder mask without input_ids)
        return self.head.dequantize(self.dtype)

    def forward(self, input_ids):
        return self.head.qweight[input_ids].to(self.dtype) * self.head.scales[input_ids, None].to(self.dtype)


@torch.no_grad()
def quantize_int8(model, modules=None):
    """Replace the `nn.Linear` layers of `model` (a `TinyGiantForConditionalGeneration`) with `Int8Linear`, in place.

    Covers the three encoders, the projector and the LLM; the tied embedding / LM head become one int8 table.
    Convolutions, norms and `nn.MultiheadAttention`'s fused projections stay in their dtype. `modules` optionally
    limits it to some submodules (e.g. `[model.model.language_model]`). For inference only (no training, no saving);
    returns the model. Quantising a model a second time changes nothing.

    Memory: the model is loaded in float first, then quantised one layer at a time, each float weight dropped as
    soon as its int8 copy exists, so the process ends up holding about the int8 size instead of float + int8 (full
    size: 3.0 GB of RSS in bf16, 1.7 GB after). The peak stays about the float model's; avoiding that too would take
    a loader that quantises while reading the checkpoint, which is not worth its complexity here.
    """
    dtype = model.dtype
    lm_head = getattr(model, "lm_head", None)
    for target in modules if modules is not None else [model]:
        # Exactly `nn.Linear`: `nn.MultiheadAttention`'s out_proj is a subclass, and attention reads its weight
        # directly. Names, not modules: a list holding the layers would keep every float weight alive to the end.
        names = [name for name, module in target.named_modules() if type(module) is nn.Linear and module is not lm_head]
        freed_bytes = 0
        for name in names:
            parent_name, _, child_name = name.rpartition(".")
            parent = target.get_submodule(parent_name)
            linear = getattr(parent, child_name)
            setattr(parent, child_name, Int8Linear.from_linear(linear))
            freed_bytes += linear.weight.nbytes
            del linear  # its float weight is freed here
            # Without a trim now and then the heap fragments and grows; trimming after every layer costs seconds.
            if freed_bytes > 2**28:
                _release_freed_memory()
                freed_bytes = 0
    if modules is None and type(lm_head) is nn.Linear:
        embeddings = model.get_input_embeddings()
        tied = lm_head.weight is embeddings.weight
        model.lm_head = Int8Linear.from_linear(lm_head)
        if tied:
            model.model.language_model.embed_tokens = Int8Embedding(model.lm_head, dtype, embeddings.padding_idx)
        del lm_head, embeddings  # the float table goes now, not when this function returns
    _release_freed_memory()
    return model


def _release_freed_memory():
    """Hand the freed float weights back to the OS: glibc keeps freed heap blocks, so RSS would not drop otherwise."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass

