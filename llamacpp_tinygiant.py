"""TinyGiant's language model on llama.cpp, for CPU decoding near the memory-bandwidth limit.

    from llamacpp_tinygiant import LlamaCppDecoder, export_gguf
    export_gguf(model, "qwen3-q8_0.gguf")                 # once per checkpoint: Qwen3's weights as GGUF
    decoder = LlamaCppDecoder("qwen3-q8_0.gguf")
    tokens = decoder.generate(model, **processor_inputs, max_new_tokens=256)

The encoders and the projector stay in PyTorch: `TinyGiantModel.embed_inputs` gives the prompt's input embeddings
with the audio already merged, and llama.cpp reads those embeddings for the prompt (a llama.cpp batch can carry
embeddings instead of tokens), then decodes token by token from its own KV cache. Why: PyTorch's one-row matmuls
stream weights at about half the read bandwidth on CPUs, and a decoding step runs hundreds of small ops; llama.cpp's
fused Q8_0 / BF16 kernels and its single compute graph per step get much closer (see the README's performance table).

Choices, where the paper and the issue are silent:
- The GGUF holds only the LLM's weights and hyper-parameters, no vocabulary (`tokenizer.ggml.model = "none"` with
  `vocab_size`): tokenising and detokenising stay with the checkpoint's own tokenizer, so nothing can disagree.
- `weights="q8_0"` (the default) quantises every matrix to 8 bits in blocks of 32 with one scale each (llama.cpp's
  own quantiser); `"bf16"` keeps the weights. Both are lossy against the PyTorch path only through kernel
  arithmetic and, for Q8_0, rounding; the benchmark measures agreement with the plain path.
- Decoding reads the model's `generation_config` as `model.generate` does: greedy, or sampling through
  transformers' own logits warpers; extra `logits_processor`s and a `streamer` (e.g. `TextIteratorStreamer`) are
  honoured. Beam search is not offered.
- Batches run one sample after another (left padding is dropped through the attention mask).

Remote code: imports torch and numpy, and `llama_cpp` (the `llama-cpp-python` package) and `gguf` when used.
"""

import copy
import ctypes
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

try:
    from .int8_tinygiant import _release_freed_memory, cpu_has_amx
    from .modeling_tinygiant import AUDIO_INPUTS, ENCODED_AUDIO_INPUTS
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from int8_tinygiant import _release_freed_memory, cpu_has_amx  # this repository, imported as top-level modules
    from modeling_tinygiant import AUDIO_INPUTS, ENCODED_AUDIO_INPUTS

if TYPE_CHECKING:  # names for annotations only
    from transformers import LogitsProcessor
    from transformers.generation.streamers import BaseStreamer

    from modeling_tinygiant import TinyGiantForConditionalGeneration

GGUF_WEIGHTS = ("q8_0", "bf16")


# llama.cpp's extra weight buffers (Q8_0 repacked for AVX, or for AMX tiles). On a Xeon with AMX, llama-cpp-python
# 0.3.35-0.3.36 built for the machine segfaulted in the first decode of a Q8_0 GGUF (the tiny test model): there they
# stay off, and decoding reads the plain Q8_0 weights; elsewhere they are on, as measured in the benchmarks.
EXTRA_BUFFER_TYPES = not cpu_has_amx()
# What `generate` passes to `TinyGiantModel.embed_inputs` rather than to the generation config.
MODEL_INPUTS = (*AUDIO_INPUTS, *ENCODED_AUDIO_INPUTS, "instruction_mask")


def _llama_cpp():
    """The `llama_cpp` module, its backend initialised once and its logging silenced (it logs every load)."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError("the llama.cpp decoder needs llama-cpp-python: pip install 'tinygiant[llamacpp]'") from error
    if not hasattr(_llama_cpp, "silent_log"):
        llama_cpp.llama_backend_init()
        # Kept on the function: llama.cpp holds the pointer, so the callback must outlive this call.
        _llama_cpp.silent_log = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_llama_cpp.silent_log, ctypes.c_void_p())
    return llama_cpp


# ----------------------------------------------------------------------------- export


@torch.no_grad()
def export_gguf(model: "TinyGiantForConditionalGeneration", path: str | os.PathLike[str],
                weights: str = "q8_0") -> Path:
    """Write the Qwen3 part of a `TinyGiantForConditionalGeneration` (its layers, final norm and LM head) to `path`.

    The float weights are written first (matrices in bf16, vectors in float32, as llama.cpp's converter does), one
    tensor at a time, then quantised by llama.cpp for `weights="q8_0"`. An int8 model (`int8_tinygiant`) is
    exported from its dequantised weights, one matrix in memory at a time. The file is written under a temporary
    name and renamed, so a crash never leaves a partial GGUF. Returns `path`.
    """
    try:  # in a try: transformers' remote-code loader would otherwise demand gguf of every user of the pipeline
        import gguf
    except ImportError as error:
        raise ImportError("writing a GGUF needs the gguf package: pip install 'tinygiant[llamacpp]'") from error

    if weights not in GGUF_WEIGHTS:
        raise ValueError(f"weights must be one of {GGUF_WEIGHTS}, not {weights!r}")
    path = Path(path)
    config = model.config.text_config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, config.num_hidden_layers)
    tensors = dict(_float_tensors(model))  # name -> function giving the float tensor (dequantised on demand)

    path.parent.mkdir(parents=True, exist_ok=True)
    float_path = path.with_name(path.name + ".float.tmp")
    writer = gguf.GGUFWriter(str(float_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("none")  # no vocabulary: the checkpoint's tokenizer does all text work
    writer.add_vocab_size(config.vocab_size)
    arrays = {}
    for hf_name, get in tensors.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for Qwen3 tensor {hf_name}")
        tensor = get()
        shape, matrix = tensor.shape, tensor.dim() == 2
        del tensor
        dtype, item = (np.int16, 2) if matrix else (np.float32, 4)
        writer.add_tensor_info(gguf_name, shape, np.dtype(dtype), int(np.prod(shape)) * item,
                               raw_dtype=gguf.GGMLQuantizationType.BF16 if matrix else None)
        arrays[gguf_name] = (get, matrix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for get, matrix in arrays.values():  # in the order of the tensor infos, which is what the writer expects
        tensor = get()
        data = tensor.to(torch.bfloat16).contiguous().view(torch.int16) if matrix else tensor.float().contiguous()
        writer.write_tensor_data(data.numpy())
        del tensor, data
    writer.close()

    partial = path.with_name(path.name + ".tmp")
    try:
        if weights == "bf16":
            os.replace(float_path, partial)
        else:
            lc = _llama_cpp()
            params = lc.llama_model_quantize_default_params()
            params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q8_0
            params.nthread = torch.get_num_threads()
            if lc.llama_model_quantize(str(float_path).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
                raise RuntimeError(f"llama.cpp could not quantise {float_path} to Q8_0")
        os.replace(partial, path)
    finally:
        for leftover in (float_path, partial):
            leftover.unlink(missing_ok=True)
    return path


def _float_tensors(model):
    """(Hugging Face Qwen3 name, function returning the float tensor) for every tensor llama.cpp needs.

    Functions, not tensors: an int8 linear's float weight is made when it is written and dropped after.
    """
    language_model = model.model.language_model
    if any(isinstance(layer, LlamaCppLayer) for layer in language_model.layers):
        raise ValueError("this model's language model already runs on llama.cpp: export from a fresh copy")
    yield "model.embed_tokens.weight", lambda: language_model.embed_tokens.weight  # int8 tables dequantise
    for i, layer in enumerate(language_model.layers):
        for name, module in layer.named_modules():
            if name and not list(module.children()) and hasattr(module, "weight"):  # linears (float, int8), norms
                yield f"model.layers.{i}.{name}.weight", lambda m=module: m.weight
    yield "model.norm.weight", lambda: language_model.norm.weight
    if not model.config.text_config.tie_word_embeddings:
        yield "lm_head.weight", lambda: model.lm_head.weight


class LlamaCppLayer(torch.nn.Module):
    """Stands in for a decoder layer whose weights now live in llama.cpp: running it is an error, not garbage."""

    def forward(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("this TinyGiant's language model runs on llama.cpp: generate with LlamaCppDecoder.generate "
                           "(the pipeline does), or load the model again for PyTorch")


def _rope_theta(config):
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


# ----------------------------------------------------------------------------- decoding


class LlamaCppDecoder:
    """A llama.cpp context over a GGUF from `export_gguf`: prompt embeddings in, greedy tokens out.

    `n_ctx` bounds prompt + new tokens. By default the context grows with the requests (from 1024 tokens, doubling,
    up to the model's trained length): its KV cache costs 114 KB per token for Qwen3-0.6B, so a fixed 4096 would hold
    0.35 GB more than a 30 s clip's question needs. `n_threads` defaults to PyTorch's thread count. Not thread-safe:
    one generation at a time (the pipeline holds a lock).
    """

    def __init__(self, path, n_ctx=None, n_threads=None, n_batch=512):
        lc = _llama_cpp()
        if not Path(path).is_file():
            raise FileNotFoundError(f"no GGUF at {path} (write one with export_gguf)")
        model_params = lc.llama_model_default_params()
        model_params.use_extra_bufts = EXTRA_BUFFER_TYPES
        self._model = lc.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path}")
        self._lc, self._ctx, self.path = lc, None, path
        self.n_batch, self.n_threads = n_batch, n_threads or torch.get_num_threads()
        self.max_ctx = n_ctx or lc.llama_model_n_ctx_train(self._model)
        self.hidden_size = lc.llama_model_n_embd(self._model)
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._embd_batch = lc.llama_batch_init(n_batch, self.hidden_size, 1)
        self._token_batch = lc.llama_batch_init(1, 0, 1)
        self._make_context(n_ctx or min(1024, self.max_ctx))

    def _make_context(self, n_ctx):
        if self._ctx:
            self._lc.llama_free(self._ctx)
        params = self._lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, self.n_batch, self.n_batch
        params.n_threads = params.n_threads_batch = self.n_threads
        params.n_seq_max = 1
        self._ctx = self._lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}")
        self.n_ctx = n_ctx

    def _reserve(self, n_tokens):
        """Make the context hold `n_tokens` (prompt + new tokens), growing it if it may."""
        if n_tokens > self.max_ctx:
            raise ValueError(f"{n_tokens} tokens (prompt + new tokens) do not fit the {self.max_ctx}-token context")
        if n_tokens > self.n_ctx:
            n_ctx = self.n_ctx
            while n_ctx < n_tokens:
                n_ctx *= 2
            self._make_context(min(n_ctx, self.max_ctx))

    @classmethod
    def from_model(cls, model: "TinyGiantForConditionalGeneration", gguf: str | os.PathLike[str] | None = None,
                   weights: str = "q8_0", **kwargs: int | None) -> "LlamaCppDecoder":
        """Hand the language model of `model` to llama.cpp: export it to `gguf` unless that file exists (a
        temporary file when `gguf` is None), replace its PyTorch decoder layers with `LlamaCppLayer`s to free them,
        and load it. The embedding table (and the LM head it is tied to) stays, for `embed_inputs`. `kwargs` go to
        the constructor."""
        if gguf is not None and Path(gguf).is_file():
            path, scratch = Path(gguf), None
        else:
            scratch = (None if gguf is not None
                       else tempfile.TemporaryDirectory(prefix="tinygiant-gguf-", ignore_cleanup_errors=True))
            path = export_gguf(model, gguf if gguf is not None else Path(scratch.name) / f"qwen3-{weights}.gguf",
                               weights)
        layers = model.model.language_model.layers
        for i in range(len(layers)):
            layers[i] = LlamaCppLayer()  # the float (or int8) weights go before llama.cpp maps its own
        _release_freed_memory()
        decoder = cls(path, **kwargs)
        if scratch is not None:
            scratch.cleanup()  # llama.cpp has mapped the file; on Linux its pages stay readable after the unlink
        return decoder

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lc.llama_batch_free(self._embd_batch)
            self._lc.llama_batch_free(self._token_batch)
            self._lc.llama_free(self._ctx)
            self._lc.llama_model_free(self._model)
            self._ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the llama_cpp module may already be gone
            pass

    def _decode(self, batch, n_tokens, logits=True):
        batch.n_tokens = n_tokens
        status = self._lc.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp decode failed (status {status})")
        if not logits:
            return None
        logits = self._lc.llama_get_logits_ith(self._ctx, n_tokens - 1)
        return torch.from_numpy(np.ctypeslib.as_array(logits, shape=(self.vocab_size,)).copy())

    def prefill(self, inputs_embeds: torch.Tensor, new_tokens: int = 1) -> torch.Tensor:
        """Forget any earlier sequence, read `inputs_embeds` (prompt length, hidden) and return the last logits;
        the context is made to hold `new_tokens` more."""
        if inputs_embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"embeddings of width {inputs_embeds.shape[-1]} for a model of width {self.hidden_size}")
        self._reserve(len(inputs_embeds) + new_tokens)
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._ctx), True)
        embeddings = inputs_embeds.detach().float().contiguous().numpy()
        batch = self._embd_batch
        for start in range(0, len(embeddings), self.n_batch):
            chunk = embeddings[start:start + self.n_batch]
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            last = start + len(chunk) == len(embeddings)
            for i in range(len(chunk)):
                batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = start + i, 1, 0
                batch.logits[i] = last and i == len(chunk) - 1
            logits = self._decode(batch, len(chunk), logits=last)
        self.position = len(embeddings)
        return logits

    def step(self, token: int | torch.Tensor) -> torch.Tensor:
        """Append one token and return its logits."""
        if self.position >= self.n_ctx:
            raise ValueError(f"the {self.n_ctx}-token context is full")
        batch = self._token_batch
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = (
            int(token), self.position, 1, 0, 1)
        self.position += 1
        return self._decode(batch, 1)

    @torch.no_grad()
    def teacher_forced_logits(self, model: "TinyGiantForConditionalGeneration",
                              continuation: torch.Tensor | Sequence[int], input_ids: torch.Tensor,
                              attention_mask: torch.Tensor | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits after the prompt and after each token of `continuation` (1-D), for one sample: shape
        (len(continuation) + 1, vocab), the rows `model(prompt + continuation).logits[prompt_length - 1:]` would give.
        For measuring agreement with PyTorch."""
        if len(input_ids) != 1:
            raise ValueError("teacher forcing takes one sample")
        embeds = model.model.embed_inputs(input_ids=input_ids, **inputs)[0]
        if attention_mask is not None:
            embeds = embeds[attention_mask[0].bool()]
        logits = [self.prefill(embeds, len(continuation) + 1)]
        return torch.stack(logits + [self.step(int(token)) for token in continuation])

    @torch.no_grad()
    def generate(self, model: "TinyGiantForConditionalGeneration", input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, streamer: "BaseStreamer | None" = None,
                 logits_processor: "list[LogitsProcessor] | None" = None, generator: torch.Generator | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """`model.generate` for a TinyGiant whose LLM runs here: returns (batch, prompt + new) token ids, each row
        padded on the right with `pad_token_id` after its end-of-sequence token, like transformers does.

        `kwargs` holds the processor's other outputs (audio, `instruction_mask`) and generation settings, which
        update the model's `generation_config` as in `model.generate`: `max_new_tokens`, `min_new_tokens`,
        `eos_token_id`, `pad_token_id`, and for `do_sample=True` `temperature`, `top_k`, `top_p`, `min_p`
        (transformers' own logits warpers; `generator` seeds the draw). Beam search and several sequences per
        prompt are refused.
        """
        inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_INPUTS}
        config = copy.deepcopy(model.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise ValueError(f"the llama.cpp decoder does not take {sorted(unused)}")
        if (config.num_beams or 1) != 1 or (config.num_return_sequences or 1) != 1:
            raise ValueError("the llama.cpp decoder decodes one sequence per prompt: no beam search")
        if streamer is not None and len(input_ids) > 1:
            raise ValueError("streaming needs a batch of one")
        eos = config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else eos or [])
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        max_new = config.max_new_tokens
        if max_new is None:  # transformers' default when neither is set
            max_new = (config.max_length or 20) - input_ids.shape[1]
        processors = LogitsProcessorList(logits_processor or [])
        if config.min_new_tokens and eos:
            processors.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[1], config.min_new_tokens, list(eos)))
        if config.do_sample:
            processors.extend(_warpers(config))

        embeds = model.model.embed_inputs(input_ids=input_ids, **inputs)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rows = []
        for row in range(len(input_ids)):
            if streamer is not None:
                streamer.put(input_ids[row:row + 1].cpu())
            # The sequence as transformers' processors see it: the full (padded) prompt, then the new tokens.
            sequence = input_ids[row:row + 1]
            logits = self.prefill(embeds[row][mask[row]], max_new)
            for _ in range(max_new):
                scores = processors(sequence, logits[None])
                if config.do_sample:
                    token = torch.multinomial(scores.softmax(-1), 1, generator=generator)[0]
                else:
                    token = scores.argmax(-1)
                sequence = torch.cat([sequence, token.to(sequence.dtype)[None]], dim=1)
                if streamer is not None:
                    streamer.put(token.cpu())
                if int(token) in eos or sequence.shape[1] - input_ids.shape[1] == max_new:
                    break
                logits = self.step(int(token))
            rows.append(sequence[0, input_ids.shape[1]:])
        if streamer is not None:
            streamer.end()
        new = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=input_ids.dtype)
        for i, r in enumerate(rows):
            new[i, :len(r)] = r
        return torch.cat([input_ids, new], dim=1)


def _warpers(config):
    """transformers' sampling warpers for a generation config, in `generate`'s order."""
    warpers = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(config.min_p))
    return warpers
