"""The `audio-reasoning` pipeline: ask TinyGiant a question about a sound, get its reasoning and its answer.

```python
from transformers import pipeline

pipe = pipeline("audio-reasoning", model="<repo or folder>", trust_remote_code=True)
pipe("dog.wav", question="What animal is this?", choices=["dog", "cat", "bird"])
# {"text": "<think>...</think>\\n<RESPONSE>...", "thinking": "...", "answer": "... (a) dog.", "choice": "dog"}

pipe = pipeline("audio-reasoning", model="<repo or folder>", trust_remote_code=True, int8=True)  # int8 on CPU
```

This file ships with the checkpoint (remote code): it imports only `transformers`, `torch` and its siblings
`parsing_tinygiant.py` and `int8_tinygiant.py`. Importing it registers the task, so `Pipeline.save_pretrained`
can write the `custom_pipelines` entry of `config.json`.
"""

import io
import threading
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging

try:
    from .int8_tinygiant import quantize_int8
    from .parsing_tinygiant import SYSTEM_PROMPT, parse_response, question_messages
except ImportError:
    if __package__:  # remote code: the sibling is there, so a dependency it imports is missing; say which
        raise
    from int8_tinygiant import quantize_int8  # this repository, imported as top-level modules
    from parsing_tinygiant import SYSTEM_PROMPT, parse_response, question_messages

logger = logging.get_logger(__name__)

TASK = "audio-reasoning"
DEFAULT_MAX_NEW_TOKENS = 1024  # CoTA answers run to a few hundred tokens; Audio-Reasoner allowed 2048
# What a per-item input dict may hold.
ITEM_KEYS = {"audio", "question", "choices", "sampling_rate"}


class TinyGiantAudioReasoningPipeline(Pipeline):
    """Answers questions about audio with a short chain of thought.

    Inputs, alone or in a list (or a `datasets.Dataset` / generator):
        - a path to an audio file (anything libsndfile reads: wav, flac, ogg, mp3, ...) or its bytes;
        - a numpy array or torch tensor of samples, with `sampling_rate=` in the call;
        - a dict `{"array": ..., "sampling_rate": ...}` (a decoded `datasets.Audio` value) or `{"path"|"bytes": ...}`;
        - a dict `{"audio": <any of the above>, "question": ..., "choices": [...]}` for a per-item question.

    Creation parameter (`pipeline("audio-reasoning", ..., int8=True)`):
        int8 (`bool`, *optional*): replace the model's linear layers with int8 weights (`quantize_int8`), once, in
            place: about two thirds of bf16's memory and faster decoding on CPU. Such a pipeline cannot be saved.

    Call parameters:
        question (`str`): the question, unless every item carries its own.
        choices (`list[str]`, *optional*): 2 to 6 options, listed in the prompt as `(a) ...`, `(b) ...`.
        system_prompt (`str`, *optional*): defaults to `SYSTEM_PROMPT` (Audio-Reasoner's, with `<think>` markup);
            `None` or `""` sends no system turn.
        sampling_rate (`int`, *optional*): rate of raw arrays.
        batch_size (`int`, *optional*): items per `generate` call (one left-padded batch).
        Anything else (`max_new_tokens`, `do_sample`, `temperature`, `top_p`, `streamer`, ...) goes to
        `model.generate`; `generate_kwargs={...}` is accepted too. Unset, they come from the checkpoint's
        `generation_config.json`, except `max_new_tokens`, which defaults to 1024 if that file does not set it.

    Returns one dict per input: `{"text", "thinking", "answer"}` plus `"choice"` (the option text the answer picks,
    or `None`) when choices were given. An output cut off by `max_new_tokens` keeps `text` and `thinking` and has
    `answer=None` (and `choice=None`).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, int8=False, **kwargs):
        super().__init__(*args, **kwargs)  # places the model on its device first
        self.int8 = int8
        # One pipeline called from several threads runs one item's preprocessing or generation at a time: the fast
        # tokenizer refuses concurrent use ("Already borrowed") and the model's caches are not meant to be shared.
        self.lock = threading.RLock()
        if int8:
            quantize_int8(self.model)

    def save_pretrained(self, save_directory, **kwargs):
        """Save a loadable folder: `Pipeline.save_pretrained` writes the model, this file and the tokenizer, but not
        the processor (feature extractors, chat template, `processing_tinygiant.py`)."""
        if self.int8:
            raise ValueError("an int8 pipeline cannot be saved (int8 weights are for inference only): save the "
                             "pipeline of the float model")
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)

    def _sanitize_parameters(self, question=None, choices=None, system_prompt=..., sampling_rate=None,
                             generate_kwargs=None, **kwargs):
        preprocess = {"question": question, "choices": choices, "sampling_rate": sampling_rate}
        preprocess = {k: v for k, v in preprocess.items() if v is not None}
        if system_prompt is not ...:  # `None` is a real value here: no system turn
            preprocess["system_prompt"] = system_prompt
        forward = {**(generate_kwargs or {}), **kwargs}
        return preprocess, forward, {}

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:
            return []  # an empty batch
        return super().__call__(inputs, *args, **kwargs)

    def preprocess(self, inputs, question=None, choices=None, system_prompt=SYSTEM_PROMPT, sampling_rate=None):
        with self.lock:
            return self._preprocess(inputs, question, choices, system_prompt, sampling_rate)

    def _preprocess(self, inputs, question, choices, system_prompt, sampling_rate):
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
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        model_inputs = self.processor(text=prompt, audio=_as_audio(inputs), sampling_rate=sampling_rate)
        return {**model_inputs, "choices": None if choices is None else list(choices)}

    def _collate(self, items):
        """One generation batch from preprocessed items (the processor's left-padded layout), with their choices.

        The audio tensors hold one row per 30 s / 10 s window, not per item, so HF's default collator cannot pad them.
        """
        choices = [item.pop("choices") for item in items]
        return {**self.processor.pad(items, padding_side="left"), "choices": choices}

    def _forward(self, model_inputs, **generate_kwargs):
        choices = model_inputs.pop("choices")
        # Neither the call nor the checkpoint's generation config bounds the output: Qwen's `max_length=20` would cut
        # every chain of thought short.
        if not {"max_new_tokens", "max_length"} & generate_kwargs.keys() and (
            self.model.generation_config.max_new_tokens is None
        ):
            generate_kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        prompt_length = model_inputs["input_ids"].shape[1]
        with self.lock:
            sequences = self.model.generate(**model_inputs, **generate_kwargs)
        new_tokens = sequences[:, prompt_length:]
        # A row without an end-of-sequence token stopped at the length limit: its answer is missing.
        eos = generate_kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=new_tokens.dtype)
        finished = torch.isin(new_tokens, eos.to(new_tokens.device)).any(dim=1)
        return {"new_tokens": new_tokens, "finished": finished, "choices": choices}

    def postprocess(self, model_outputs):
        text = self.tokenizer.decode(model_outputs["new_tokens"], skip_special_tokens=True)
        result = parse_response(text, model_outputs["choices"])
        if not model_outputs["finished"]:
            logger.warning("generation stopped at the token limit before the answer; raise `max_new_tokens`")
            result["answer"] = None
            if "choice" in result:
                result["choice"] = None
        return result

    # Batching is ours end to end: HF's collator and batch unrolling assume one tensor row per item.
    def _unbatch(self, outputs):
        for i, choices in enumerate(outputs["choices"]):
            yield {"new_tokens": outputs["new_tokens"][i], "finished": bool(outputs["finished"][i]), "choices": choices}

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        batch = self._collate([self.preprocess(inputs, **preprocess_params)])
        outputs = self.forward(batch, **forward_params)
        return self.postprocess(next(self._unbatch(outputs)), **postprocess_params)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
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


def _as_audio(audio):
    """Check one audio input's type and put it in a form the processor's `load_audio` reads."""
    if isinstance(audio, (bytes, bytearray)):
        return {"bytes": bytes(audio)}
    if hasattr(audio, "get_all_samples"):  # a torchcodec AudioDecoder, as `datasets` 4+ decodes audio columns
        samples = audio.get_all_samples()
        return {"array": samples.data.numpy(), "sampling_rate": samples.sample_rate}
    if isinstance(audio, (str, Path, dict, np.ndarray, torch.Tensor, io.BytesIO)):
        return audio
    hint = ""
    if isinstance(audio, (int, float, np.number)):
        hint = " (a list is a batch of inputs: pass a clip's samples as an array)"
    raise TypeError(
        f"unsupported audio input of type {type(audio).__name__}{hint}: pass a file path, a numpy array with "
        "`sampling_rate=`, a {'array', 'sampling_rate'} dict, or {'audio': ..., 'question': ...}"
    )


def load_pipeline(model, int8=False, **kwargs):
    """`pipeline("audio-reasoning")` on a TinyGiant folder or Hub repo (`model`), with `trust_remote_code=True`.

    A folder or repo that ships this file runs its own copy. A folder saved by hand with `model.save_pretrained` has
    none (its config may still declare the task, copied from the checkpoint it was loaded from): it runs this file,
    which importing it registered. `int8=True` quantises the weights.
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
