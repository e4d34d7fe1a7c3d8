"""TinyGiant on ONNX Runtime, without PyTorch: a folder written by `tinygiant export onnx` answers questions.

```python
from onnx_tinygiant import TinyGiantOnnx

model = TinyGiantOnnx.from_pretrained("<exported folder>")           # dtype="q8" for the int8 files
model("dog.wav", question="What animal is this?", choices=["dog", "cat", "bird"])
# {"text": "<think>...</think>\\n<RESPONSE>...", "thinking": "...", "answer": "... (a) dog.", "choice": "dog"}
model("dog.wav", question="Is it big?")                              # the clip's encoder outputs are reused
```

The folder's `onnx/` holds four graphs, named as transformers.js names an audio LLM's:
- `audio_encoder`: the Whisper windows, the HTS-AT and CLAP windows and the pooling to N steps (eq. 1-3). It does not
  depend on the question, so it runs once per clip: its outputs are kept (an LRU of `audio_cache` clips, keyed by
  the clip's features) and a follow-up question skips it.
- `projector`: the pooled streams, the intent query and the CLAP vector -> N embeddings per audio (eq. 4-15).
- `embed_tokens`: token ids -> input embeddings (the intent query, eq. 11, is their mean over the user's text).
- `decoder_model_merged`: Qwen3 with its KV cache (`past_key_values.{i}.key/value` in, `present.{i}.key/value`
  out; an empty past for the prompt), giving the last position's `logits`.

Each comes in the variants transformers.js loads with its `dtype` option: fp32 (`audio_encoder.onnx`), `q8` (int8
weights, `audio_encoder_quantized.onnx`), `q4` (4-bit MatMul weights, `_q4`) and `fp16` (`_fp16`), where exported.

Audio, windows (up to the processor's 600 s), prompt and answer parsing are the pipeline's own: this file reads
audio and renders the prompt through `processing_tinygiant.TinyGiantProcessor` (which works without torch) and the
checkpoint's chat template, and reads the output with `parsing_tinygiant.parse_output`. Decoding is greedy or
samples with the generation config's temperature / top-k / top-p / min-p, as `model.generate` does; beam search is
not offered. One clip and one question per call.

Remote code: imports onnxruntime, numpy, transformers (tokenizer, feature extractors and chat template only), and
through its siblings soundfile, soxr and jinja2; never torch.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

try:
    from .parsing_tinygiant import parse_output, question_messages
    from .processing_tinygiant import TinyGiantProcessor
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from parsing_tinygiant import parse_output, question_messages  # this repository, imported as top-level modules
    from processing_tinygiant import TinyGiantProcessor

ONNX_FOLDER = "onnx"
# The four graphs, in the order a question runs them.
ONNX_PARTS = ("audio_encoder", "projector", "embed_tokens", "decoder_model_merged")
# transformers.js's `dtype` names and the suffix each gives a graph's file name (`onnx/<part><suffix>.onnx`).
VARIANTS = {"fp32": "", "fp16": "_fp16", "q8": "_quantized", "q4": "_q4"}
# Where the checkpoint's generation config bounds nothing, the pipeline's bound on new tokens.
DEFAULT_MAX_NEW_TOKENS = 1024
# What the call takes from `generation_config.json` and lets the caller override.
GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "max_new_tokens", "eos_token_id")
AUDIO_FEATURES = ("whisper_input_features", "clap_input_features", "whisper_lengths", "htsat_lengths")


def onnx_path(folder: str | Path, part: str, dtype: str = "fp32") -> Path:
    """Where `part`'s graph of variant `dtype` lives in an exported folder."""
    if dtype not in VARIANTS:
        raise ValueError(f"dtype must be one of {list(VARIANTS)}, not {dtype!r}")
    return Path(folder) / ONNX_FOLDER / f"{part}{VARIANTS[dtype]}.onnx"


def load_processor(folder: Path) -> TinyGiantProcessor:
    """The checkpoint's `TinyGiantProcessor`, built from its files without torch.

    `ProcessorMixin.from_pretrained` would look `ClapFeatureExtractor` up in transformers' top-level namespace, which
    without torch gives a placeholder that demands it (only CLAP's `fusion` mode needs torch; TinyGiant reads
    `rand_trunc` windows), so the extractors come from their modules here.
    """
    from transformers import AutoTokenizer
    from transformers.models.clap.feature_extraction_clap import ClapFeatureExtractor
    from transformers.models.whisper.feature_extraction_whisper import WhisperFeatureExtractor

    config = json.loads((folder / "processor_config.json").read_text())
    template = folder / "chat_template.jinja"
    options = {key: config[key] for key in ("audio_token", "num_audio_tokens", "max_audio_seconds") if key in config}
    return TinyGiantProcessor(
        ClapFeatureExtractor.from_dict(config["feature_extractor"]),
        WhisperFeatureExtractor.from_dict(config["whisper_feature_extractor"]),
        AutoTokenizer.from_pretrained(folder, trust_remote_code=False),
        chat_template=template.read_text() if template.is_file() else config.get("chat_template"),
        **options,
    )


class AudioFeatureCache:
    """The `audio_encoder`'s outputs of the last `max_items` clips, keyed by a hash of the clip's encoder inputs."""

    def __init__(self, max_items: int = 32):
        self.max_items = max_items
        self.entries: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(features: dict[str, np.ndarray]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for name in AUDIO_FEATURES:
            array = np.ascontiguousarray(features[name])
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: dict[str, np.ndarray]) -> None:
        self.entries[key] = entry
        while len(self.entries) > self.max_items:
            self.entries.popitem(last=False)


class TinyGiantOnnx:
    """TinyGiant's four ONNX graphs with the checkpoint's processor: `model(audio, question=...)` -> the pipeline's
    dict.

    Build it with `from_pretrained`. Not thread-safe: one question at a time per object.
    """

    def __init__(self, processor: TinyGiantProcessor, sessions: dict[str, onnxruntime.InferenceSession],
                 generation_config: dict, audio_token_id: int, audio_cache: int = 32):
        self.processor = processor
        self.audio_token_id = audio_token_id  # the model's placeholder id (config.json), as the model reads it
        self.tokenizer = processor.tokenizer
        self.sessions = sessions
        self.generation_config = generation_config
        self.audio_cache = AudioFeatureCache(audio_cache) if audio_cache else None
        decoder = sessions["decoder_model_merged"]
        self.past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_key_values.")]
        past = next(i for i in decoder.get_inputs() if i.name.startswith("past_key_values."))
        self.past_shape = past.shape[1], past.shape[3]  # (key-value heads, head dim); batch and length vary
        self.past_dtype = np.float16 if past.type == "tensor(float16)" else np.float32
        self.embeds_dtype = np.float16 if decoder.get_inputs()[0].type == "tensor(float16)" else np.float32

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: str = "fp32", providers: list | None = None,
                        session_options: onnxruntime.SessionOptions | None = None, audio_cache: int = 32,
                        ) -> "TinyGiantOnnx":
        """Load an exported folder's processor, generation config and the `dtype` variant of its four graphs.

        `providers` and `session_options` go to every `onnxruntime.InferenceSession` (default: CPU, ONNX Runtime's
        own threading). `audio_cache` clips keep their encoder outputs (0: none).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder (export one with `tinygiant export onnx MODEL_DIR OUT`)")
        paths = {part: onnx_path(folder, part, dtype) for part in ONNX_PARTS}
        missing = [str(p.relative_to(folder)) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: write the graphs with `tinygiant export "
                                    f"onnx MODEL_DIR {folder}`" + (" (the quantised and fp16 variants are written "
                                                                    "unless --no-variants)" if dtype != "fp32" else ""))
        processor = load_processor(folder)
        generation_path = folder / "generation_config.json"
        generation_config = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
        audio_token_id = json.loads((folder / "config.json").read_text())["audio_token_id"]
        sessions = {part: onnxruntime.InferenceSession(str(path), sess_options=session_options,
                                                       providers=providers or ["CPUExecutionProvider"])
                    for part, path in paths.items()}
        return cls(processor, sessions, generation_config, audio_token_id, audio_cache=audio_cache)

    # ------------------------------------------------------------------------------------------------ the call

    def __call__(self, audio, question: str, choices: list[str] | None = None, system_prompt: str | None = None,
                 sampling_rate: int | None = None, streamer=None, seed: int | None = None, **generate_kwargs) -> dict:
        """Answer `question` about `audio` (a path, URL, bytes, `{"array", "sampling_rate"}` or an array with
        `sampling_rate`, as the pipeline takes it).

        `system_prompt` replaces the checkpoint template's default system turn (the pipeline's rule). `streamer`
        (e.g. transformers' `TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)`) gets the
        prompt ids, then each new token, then `end()`, as from `model.generate`. `generate_kwargs` override the
        checkpoint's generation config: `max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`, `min_p`,
        `eos_token_id`; `seed` seeds sampling. Returns `{"text", "thinking", "answer"}` and `"choice"` with choices.
        """
        settings = self.generation_settings(generate_kwargs)
        inputs = self.prepare(audio, question, choices, system_prompt, sampling_rate)
        if streamer is not None:
            streamer.put(inputs["input_ids"])
        tokens, finished = [], False
        for token in self.generate(inputs, settings, np.random.default_rng(seed)):
            tokens.append(token)
            if streamer is not None:
                streamer.put(np.array([token]))
            finished = token in settings["eos_token_id"]
        if streamer is not None:
            streamer.end()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return parse_output(text, choices, finished=finished)

    def prepare(self, audio: Any, question: str, choices: list[str] | None = None, system_prompt: str | None = None,
                sampling_rate: int | None = None) -> dict[str, np.ndarray]:
        """The processor's numpy inputs for one clip and question, rendered as the pipeline renders them."""
        messages = question_messages(question, choices, system_prompt)  # raises on an empty question or bad choices
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return dict(self.processor(text=prompt, audio=audio, sampling_rate=sampling_rate, return_tensors="np"))

    def generation_settings(self, overrides: dict) -> dict:
        unknown = sorted(set(overrides) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"the ONNX runtime does not take {unknown}; it takes {list(GENERATION_KEYS)} and seed")
        settings = {key: self.generation_config.get(key) for key in GENERATION_KEYS}
        settings.update(overrides)
        if settings["max_new_tokens"] is None:
            settings["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        eos = settings["eos_token_id"]
        settings["eos_token_id"] = set([eos] if isinstance(eos, int) else eos or [])
        return settings

    # ------------------------------------------------------------------------------------------------ the graphs

    def encode_audio(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The `audio_encoder`'s pooled outputs for the clip in `inputs`, from the cache when it has seen the clip."""
        key = AudioFeatureCache.key(inputs) if self.audio_cache is not None else None
        cached = self.audio_cache.get(key) if key is not None else None
        if cached is not None:
            return cached
        session = self.sessions["audio_encoder"]
        feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        if key is not None:
            self.audio_cache.put(key, outputs)
        return outputs

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed_tokens"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def prompt_embeddings(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The prompt's input embeddings with the audio's N projector outputs in its placeholders (eq. 11-15)."""
        input_ids = inputs["input_ids"]
        embeds = self.embed(input_ids)
        placeholders = input_ids == self.audio_token_id
        projector = self.sessions["projector"]
        feeds = dict(self.encode_audio(inputs))
        wanted = {i.name for i in projector.get_inputs()}
        if "intent_query" in wanted:
            instruction = (inputs["instruction_mask"].astype(bool) & ~placeholders)[..., None]
            total = (embeds.astype(np.float32) * instruction).sum(1)
            feeds["intent_query"] = (total / np.maximum(instruction.sum(1), 1)).astype(np.float32)  # (11)
        audio_embeds = projector.run(None, {name: feeds[name] for name in wanted})[0]
        if int(placeholders.sum()) != audio_embeds.shape[0] * audio_embeds.shape[1]:
            raise ValueError(f"the prompt has {int(placeholders.sum())} audio placeholders for "
                             f"{audio_embeds.shape[0]} audios of {audio_embeds.shape[1]} embeddings")
        embeds[placeholders] = audio_embeds.reshape(-1, audio_embeds.shape[-1]).astype(embeds.dtype)
        return embeds

    def generate(self, inputs: dict[str, np.ndarray], settings: dict, rng: np.random.Generator) -> Iterator[int]:
        """Yield new token ids one by one, stopping after an end-of-sequence token or `max_new_tokens`."""
        decoder = self.sessions["decoder_model_merged"]
        embeds = self.prompt_embeddings(inputs).astype(self.embeds_dtype)
        past = {name: np.zeros((1, *self.past_shape[:1], 0, self.past_shape[1]), self.past_dtype)
                for name in self.past_names}
        length = 0
        for _ in range(settings["max_new_tokens"]):
            steps = embeds.shape[1]
            feeds = {
                "inputs_embeds": embeds,
                "attention_mask": np.ones((1, length + steps), np.int64),
                "position_ids": np.arange(length, length + steps, dtype=np.int64)[None],
                **past,
            }
            logits, *presents = decoder.run(None, feeds)
            past = dict(zip(self.past_names, presents))
            length += steps
            token = self.next_token(logits[0].astype(np.float32), settings, rng)
            yield token
            if token in settings["eos_token_id"]:
                return
            embeds = self.embed(np.array([[token]])).astype(self.embeds_dtype)

    @staticmethod
    def next_token(logits: np.ndarray, settings: dict, rng: np.random.Generator) -> int:
        """Greedy, or a draw after transformers' warpers in `generate`'s order: temperature, top-k, top-p, min-p."""
        if not settings["do_sample"]:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64)
        temperature = settings["temperature"]
        if temperature is not None and temperature != 1.0:
            scores = scores / temperature
        if settings["top_k"]:
            kth = np.sort(scores)[-min(int(settings["top_k"]), len(scores))]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        top_p = settings["top_p"]
        if top_p is not None and top_p < 1.0:
            order = np.argsort(probs)  # ascending, as transformers' TopPLogitsWarper; the most likely always stays
            probs[order[np.cumsum(probs[order]) <= 1 - top_p]] = 0
        if settings["min_p"] is not None:
            probs = np.where(probs < settings["min_p"] * probs.max(), 0, probs)
        probs /= probs.sum()
        return int(rng.choice(len(probs), p=probs))
