"""The `audio-reasoning` pipeline: ask TinyGiant a question about a sound, get its reasoning and its answer.

```python
from transformers import pipeline

pipe = pipeline("audio-reasoning", model="<repo or folder>", trust_remote_code=True)
pipe("dog.wav", question="What animal is this?", choices=["dog", "cat", "bird"])
# {"text": "<think>...</think>\\n<RESPONSE>...", "thinking": "...", "answer": "... (a) dog.", "choice": "dog"}

pipe = pipeline("audio-reasoning", model="<repo or folder>", trust_remote_code=True, int8=True)  # int8 on CPU

conversation = [{"role": "user", "content": [{"type": "audio", "path": "dog.wav"},
                                             {"type": "text", "text": "What is it?"}]}]
out = pipe(conversation)  # out["generated_text"]: the conversation with the new assistant turn
conversation = out["generated_text"] + [{"role": "user", "content": "Is it big?"}]
pipe(conversation)  # a follow-up: the clip's encoder outputs come from the pipeline's audio cache
```

This file ships with the checkpoint (remote code): it imports only `transformers`, `torch` and its siblings
`parsing_tinygiant.py`, `int8_tinygiant.py` and `llamacpp_tinygiant.py` (whose `llama_cpp` import waits for use).
Importing it registers the task, so `Pipeline.save_pretrained`
can write the `custom_pipelines` entry of `config.json`.
"""

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging

try:
    from .int8_tinygiant import quantize_int8
    from .llamacpp_tinygiant import GGUF_WEIGHTS, LlamaCppDecoder
    from .parsing_tinygiant import check_choices, parse_output, question_messages
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from int8_tinygiant import quantize_int8  # this repository, imported as top-level modules
    from llamacpp_tinygiant import GGUF_WEIGHTS, LlamaCppDecoder
    from parsing_tinygiant import check_choices, parse_output, question_messages

logger = logging.get_logger(__name__)

TASK = "audio-reasoning"
DEFAULT_MAX_NEW_TOKENS = 1024  # CoTA answers run to a few hundred tokens; Audio-Reasoner allowed 2048
INT8_MODES = {False: None, True: "float", "w8a8": "int8"}  # the `int8=` choices -> `quantize_int8` activations
# What a per-item input dict may hold.
ITEM_KEYS = {"audio", "question", "choices", "sampling_rate"}


class TinyGiantAudioReasoningPipeline(Pipeline):
    """Answers questions about audio with a short chain of thought.

    Inputs, alone or in a list (or a `datasets.Dataset` / generator):
        - a path to an audio file (anything libsndfile reads: wav, flac, ogg, mp3, ...), a URL, or the file's bytes;
        - a numpy array or torch tensor of samples, with `sampling_rate=` in the call;
        - a dict `{"array": ..., "sampling_rate": ...}` (a decoded `datasets.Audio` value) or `{"path"|"bytes": ...}`;
        - a dict `{"audio": <any of the above>, "question": ..., "choices": [...]}` for a per-item question;
        - a conversation: a list of chat messages (dicts with "role" and "content") whose audio sits in the content,
          `{"type": "audio", "path"|"url"|"audio": ...}` as `TinyGiantProcessor.apply_chat_template` reads it.
          Without a system message, `system_prompt` decides its system turn. The result adds `generated_text`: the
          conversation with the new assistant turn (`content` the answer, `reasoning_content` the thinking, as the
          chat template renders them back), so a follow-up is `out["generated_text"] + [next user message]`.

    Creation parameters (`pipeline("audio-reasoning", ..., int8=True)`):
        int8 (`bool` or `"w8a8"`, *optional*): replace the model's linear layers with int8 weights (`quantize_int8`),
            once, in place: about two thirds of bf16's memory and faster decoding on CPU. `"w8a8"` quantises the
            activations of the encoders and the prompt pass to int8 too (faster on CPUs with VNNI or AMX, slightly
            lossier). Such a pipeline cannot be saved.
        llama_cpp (`bool`, `"q8_0"`, `"bf16"` or a `.gguf` path, *optional*): run the language model on llama.cpp
            (`llamacpp_tinygiant`; needs `llama-cpp-python` and `gguf`): on CPUs its decoding is about twice
            PyTorch's. `True` means `"q8_0"` (8-bit weights); a path keeps the Q8_0 GGUF there (written on first
            use, read after), otherwise it is written to a temporary file when the pipeline is made. The encoders
            and projector stay in PyTorch (and take `int8=` as before). Greedy and sampling settings work as with
            `model.generate`; beam search does not. Such a pipeline cannot be saved.
        audio_cache (`int`, *optional*, defaults to 32): keep the frozen encoders' outputs of this many clips
            (`model.enable_audio_cache`), so that another question about a clip skips the encoders; 0 turns it off.

    Streaming: pass a `TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)` as
    `streamer=` and run the call in a thread; iterate the streamer for the text as it is generated (batch size 1).

    Call parameters:
        question (`str`): the question, unless every item carries its own (or is a conversation).
        choices (`list[str]`, *optional*): 2 to 6 options, listed in the prompt as `(a) ...`, `(b) ...`. For a
            conversation, whose text already lists them, they only serve to read back the `choice`.
        system_prompt (`str`, *optional*): the system turn. By default, the checkpoint's own: the prompt it was
            trained with, which its chat template carries (`processing_tinygiant.build_chat_template`); `""` sends
            no system turn.
        sampling_rate (`int`, *optional*): rate of raw arrays.
        batch_size (`int`, *optional*): items per `generate` call (one left-padded batch).
        Anything else (`max_new_tokens`, `do_sample`, `temperature`, `top_p`, `streamer`, ...) goes to
        `model.generate`; `generate_kwargs={...}` is accepted too. Unset, they come from the checkpoint's
        `generation_config.json`, except `max_new_tokens`, which defaults to 1024 if that file does not set it.

    Returns one dict per input: `{"text", "thinking", "answer"}` (and `generated_text` for a conversation) plus
    `"choice"` (the option text the answer picks, or `None`) when choices were given. An output cut off by
    `max_new_tokens` keeps `text` and `thinking` and has `answer=None` (and `choice=None`).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, int8=False, llama_cpp=False, audio_cache=32, **kwargs):
        super().__init__(*args, **kwargs)  # places the model on its device first
        if int8 not in INT8_MODES:
            raise ValueError(f"int8 must be one of {list(INT8_MODES)}, not {int8!r}")
        is_path = isinstance(llama_cpp, (str, os.PathLike)) and str(llama_cpp).endswith(".gguf")
        if not (isinstance(llama_cpp, bool) or llama_cpp in GGUF_WEIGHTS or is_path):
            raise ValueError(f"llama_cpp must be True, False, one of {list(GGUF_WEIGHTS)} or a .gguf path, "
                             f"not {llama_cpp!r}")
        self.int8 = int8
        # One pipeline called from several threads runs one item's preprocessing or generation at a time: the fast
        # tokenizer refuses concurrent use ("Already borrowed") and the model's caches are not meant to be shared.
        self.lock = threading.RLock()
        self.llama_cpp = None
        if llama_cpp:  # before int8: the GGUF is written from the float weights
            weights = llama_cpp if llama_cpp in GGUF_WEIGHTS else "q8_0"
            self.llama_cpp = LlamaCppDecoder.from_model(self.model, gguf=llama_cpp if is_path else None,
                                                        weights=weights)
        if int8:
            quantize_int8(self.model, activations=INT8_MODES[int8])
        if audio_cache:
            self.model.enable_audio_cache(audio_cache)

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:
            return []  # an empty batch
        # A conversation is a list of messages, not a batch of inputs: wrap it before the base class iterates lists.
        if is_conversation(inputs):
            inputs = Conversation(inputs)
        elif isinstance(inputs, (list, tuple)) and inputs and all(is_conversation(c) for c in inputs):
            inputs = [Conversation(c) for c in inputs]
        return super().__call__(inputs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save a loadable folder: `Pipeline.save_pretrained` writes the model, this file and the tokenizer, but not
        the processor (feature extractors, chat template, `processing_tinygiant.py`)."""
        if self.int8 or self.llama_cpp is not None:
            raise ValueError("an int8 or llama.cpp pipeline cannot be saved (its weights are for inference only): "
                             "save the pipeline of the float model")
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)

    def _sanitize_parameters(self, question=None, choices=None, system_prompt=None, sampling_rate=None,
                             generate_kwargs=None, **kwargs):
        preprocess = {"question": question, "choices": choices, "system_prompt": system_prompt,
                      "sampling_rate": sampling_rate}
        preprocess = {k: v for k, v in preprocess.items() if v is not None}
        forward = {**(generate_kwargs or {}), **kwargs}
        return preprocess, forward, {}

    def preprocess(self, inputs: Any, question: str | None = None, choices: list[str] | None = None,
                   system_prompt: str | None = None, sampling_rate: int | None = None) -> dict:
        with self.lock:
            return self._preprocess(inputs, question, choices, system_prompt, sampling_rate)

    def _preprocess(self, inputs, question, choices, system_prompt, sampling_rate):
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a string ('' for no system turn), got {system_prompt!r}")
        # "" overrides the template's default system turn; a prompt given is written as the system message.
        template_kwargs = {"default_system_prompt": ""} if system_prompt == "" else {}
        if isinstance(inputs, Conversation):
            if question is not None:
                raise ValueError("a conversation carries its own questions: put the question in its last user message")
            messages = inputs.messages
            if system_prompt and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system_prompt}, *messages]
            model_inputs = self.processor.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                              add_generation_prompt=True, **template_kwargs)
            choices = None if choices is None else check_choices(choices)
            return {**model_inputs, "choices": choices, "conversation": inputs.messages}
        if isinstance(inputs, dict) and "audio" in inputs:
            unknown = sorted(set(inputs) - ITEM_KEYS, key=str)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} in an input dict; it takes {sorted(ITEM_KEYS)}")
            question = inputs.get("question", question)
            choices = inputs.get("choices", choices)
            sampling_rate = inputs.get("sampling_rate", sampling_rate)
            inputs = inputs["audio"]
        elif isinstance(inputs, dict) and {"question", "choices"} & set(inputs):
            raise ValueError(f"an input dict with a question needs its audio under 'audio', got keys {sorted(inputs)}")
        if question is None:
            raise ValueError("no question: pass `question=` or give each input as {'audio': ..., 'question': ...}")
        messages = question_messages(question, choices, system_prompt)  # raises on an empty question or bad choices
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                    **template_kwargs)
        model_inputs = self.processor(text=prompt, audio=inputs, sampling_rate=sampling_rate)
        return {**model_inputs, "choices": choices, "conversation": None}

    def _collate(self, items):
        """One generation batch from preprocessed items (the processor's left-padded layout), with their choices.

        The audio tensors hold one row per 30 s / 10 s window, not per item, so HF's default collator cannot pad them.
        """
        choices = [item.pop("choices") for item in items]
        conversations = [item.pop("conversation") for item in items]
        return {**self.processor.pad(items, padding_side="left"), "choices": choices, "conversations": conversations}

    def _forward(self, model_inputs, **generate_kwargs):
        choices, conversations = model_inputs.pop("choices"), model_inputs.pop("conversations")
        # Neither the call nor the checkpoint's generation config bounds the output: Qwen's `max_length=20` would cut
        # every chain of thought short.
        if not {"max_new_tokens", "max_length"} & generate_kwargs.keys() and (
            self.model.generation_config.max_new_tokens is None
        ):
            generate_kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        prompt_length = model_inputs["input_ids"].shape[1]
        with self.lock:
            if self.llama_cpp is not None:
                sequences = self.llama_cpp.generate(self.model, **model_inputs, **generate_kwargs)
            else:
                sequences = self.model.generate(**model_inputs, **generate_kwargs)
        new_tokens = sequences[:, prompt_length:]
        # A row without an end-of-sequence token stopped at the length limit: its answer is missing.
        eos = generate_kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=new_tokens.dtype)
        finished = torch.isin(new_tokens, eos.to(new_tokens.device)).any(dim=1)
        return {"new_tokens": new_tokens, "finished": finished, "choices": choices, "conversations": conversations}

    def postprocess(self, model_outputs: dict) -> dict:
        text = self.tokenizer.decode(model_outputs["new_tokens"], skip_special_tokens=True)
        result = parse_output(text, model_outputs["choices"], finished=bool(model_outputs["finished"]))
        if not model_outputs["finished"]:
            logger.warning("generation stopped at the token limit before the answer; raise `max_new_tokens`")
        if model_outputs.get("conversation") is not None:
            reply = {"role": "assistant", "content": result["answer"] or "", "reasoning_content": result["thinking"]}
            result["generated_text"] = [*model_outputs["conversation"], reply]
        return result

    # Batching is ours end to end: HF's collator and batch unrolling assume one tensor row per item.
    def _unbatch(self, outputs):
        for i, (choices, conversation) in enumerate(zip(outputs["choices"], outputs["conversations"])):
            yield {"new_tokens": outputs["new_tokens"][i], "finished": bool(outputs["finished"][i]), "choices": choices,
                   "conversation": conversation}

    def run_single(self, inputs: Any, preprocess_params: dict, forward_params: dict, postprocess_params: dict) -> dict:
        batch = self._collate([self.preprocess(inputs, **preprocess_params)])
        outputs = self.forward(batch, **forward_params)
        return self.postprocess(next(self._unbatch(outputs)), **postprocess_params)

    def get_iterator(self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict,
                     forward_params: dict, postprocess_params: dict) -> Iterator[dict]:
        if hasattr(inputs, "__len__"):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # a generator: items are prepared one by one as the loader asks for them
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self._collate)
        return self._iterate(loader, forward_params, postprocess_params)

    def _iterate(self, loader, forward_params, postprocess_params):
        for batch in loader:
            for output in self._unbatch(self.forward(batch, **forward_params)):
                yield self.postprocess(output, **postprocess_params)


class Conversation:
    """One conversation given to the pipeline (its list of messages is one input, not a batch of them)."""

    def __init__(self, messages):
        self.messages = list(messages)


def is_conversation(inputs: Any) -> bool:
    """Whether `inputs` is a list of chat messages (dicts with a "role")."""
    return isinstance(inputs, (list, tuple)) and bool(inputs) and all(
        isinstance(m, dict) and "role" in m for m in inputs
    )


def load_pipeline(model: str | Path, int8: bool | str = False, **kwargs) -> "TinyGiantAudioReasoningPipeline":
    """`pipeline("audio-reasoning")` on a TinyGiant folder or Hub repo (`model`), with `trust_remote_code=True`.

    A folder or repo that ships this file runs its own copy. A folder saved by hand with `model.save_pretrained` has
    none (its config may still declare the task, copied from the checkpoint it was loaded from): it runs this file,
    which importing it registered. `int8=True` quantises the weights, `int8="w8a8"` the activations too.
    """
    from transformers import AutoConfig, pipeline

    config = AutoConfig.from_pretrained(model, trust_remote_code=True)
    if Path(model).is_dir() and not (Path(model) / "pipeline_tinygiant.py").is_file():
        config.custom_pipelines = {}
    return pipeline(TASK, model=model, config=config, trust_remote_code=True, int8=int8, **kwargs)


PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=TinyGiantAudioReasoningPipeline,
    pt_model=AutoModelForCausalLM,
    type="multimodal",
)
