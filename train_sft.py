"""Supervised fine-tuning of TinyGiant on CoTA-format audio reasoning data with TRL's `SFTTrainer`.

Shaped like TRL's `examples/scripts/sft_vlm.py`. TRL has no audio support, so this script brings its own collator
(`TinyGiantCollator`) and tells TRL to leave the dataset alone.

# Paper recipe (section 4.2) from the pretrained parts, 8 GPUs, effective batch 32:
accelerate launch --config_file accelerate_configs/multi_gpu.yaml train_sft.py \
    --dataset_config complex_audio --streaming --max_steps 20000 \
    --per_device_train_batch_size 4 --output_dir runs/tinygiant-sft

# Continue from a TinyGiant checkpoint, with LoRA on the LLM (projector fully trained), pushed to the Hub at the end:
accelerate launch --config_file accelerate_configs/zero2.yaml train_sft.py \
    --model_name_or_path you/tinygiant --dataset_config complex_audio --streaming --max_steps 5000 \
    --use_peft --lora_r 64 --lora_alpha 128 --push_to_hub --hub_model_id you/tinygiant-lora-merged

# Offline, on local CoTA-format files (JSONL or Parquet; audio as a path relative to the file, bytes, or 16 kHz floats):
python train_sft.py --model_name_or_path tiny --dataset_files data/train.jsonl --bf16 false --use_cpu

# Two CPU processes (gloo), e.g. to check DDP without GPUs:
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train_sft.py --use_cpu ...

Defaults changed from TRL's `SFTConfig` (the paper recipe; override any of them on the command line):
`learning_rate` 5e-5 (the LLM's; `--projector_learning_rate` 1e-4 is the projector's, a separate AdamW group),
`num_train_epochs` 3, `effective_batch_size` 32 (sets `gradient_accumulation_steps`), `per_device_train_batch_size` 4,
`output_dir` runs/tinygiant-sft, `logging_steps` 10, `save_steps` 500; TF32 is switched on when CUDA is there.
Kept from TRL: `bf16=True` and `gradient_checkpointing=True` (even on CPU; pass `--bf16 false` there for speed).
Forced, because the collator does the work: `max_length=None`, `remove_unused_columns=False`,
`dataset_kwargs={"skip_prepare_dataset": True}` (TRL would otherwise tokenise a `text` column and drop `audio`).
`--push_to_hub` does not push checkpoints during training: the complete, merged, loadable repo is pushed at the end.
"""

import hashlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from datasets import Audio, IterableDataset, Value, concatenate_datasets, load_dataset
from transformers import TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from modeling_tinygiant import TinyGiantForConditionalGeneration
from pipeline_tinygiant import SYSTEM_PROMPT  # the pipeline's prompt, so that training and inference match
from processing_tinygiant import HTSAT_FRAMES_PER_WINDOW, WHISPER_FRAMES_PER_WINDOW, TinyGiantProcessor, load_audio

logger = logging.getLogger("train_sft")

COTA_REPO = "zhifeixie/Audio-Reasoner-CoTA"
# The LLM's attention and MLP projections, and nothing in the encoders or the projector.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PAPER_DEFAULTS = dict(
    learning_rate=5e-5, num_train_epochs=3, per_device_train_batch_size=4, output_dir="runs/tinygiant-sft",
    logging_steps=10, save_steps=500, report_to="none",
)


@dataclass
class ScriptArguments:
    """Data, model parts and the TinyGiant-specific switches (TRL's SFTConfig and ModelConfig hold the rest)."""

    dataset_name: str = field(default=COTA_REPO, metadata={"help": "Hub dataset in CoTA format (user/assistant/audio)."})
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config names, each optionally `name:split` (e.g. `complex_audio,S2TT:e2z`). "
                  "Listed at run time; an unknown name fails with the list."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for configs without `:split`."})
    dataset_files: list[str] | None = field(
        default=None, metadata={"help": "Local CoTA-format .jsonl/.json/.parquet files; replaces the Hub dataset."}
    )
    eval_files: list[str] | None = field(default=None, metadata={"help": "Local evaluation files, same format."})
    streaming: bool = field(default=False, metadata={"help": "Stream the Hub dataset (CoTA is terabytes); needs --max_steps."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "Shuffle buffer when streaming."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    whisper: str = field(default="openai/whisper-large-v3-turbo", metadata={"help": "Whisper part (from parts only)."})
    htsat: str = field(default="laion/clap-htsat-unfused", metadata={"help": "HTS-AT part (from parts only)."})
    clap: str = field(default="laion/larger_clap_general", metadata={"help": "CLAP part (from parts only)."})
    llm: str = field(default="Qwen/Qwen3-0.6B", metadata={"help": "LLM part (from parts only)."})
    use_intent_query: bool = field(default=True, metadata={"help": "Ablation switch (only when building from parts)."})
    use_clap_gate: bool = field(default=True, metadata={"help": "Ablation switch (only when building from parts)."})
    projector_learning_rate: float = field(default=1e-4, metadata={"help": "AdamW LR of the projector."})
    effective_batch_size: int | None = field(
        default=32, metadata={"help": "Global batch; sets gradient_accumulation_steps. 0 = use the given GA steps."}
    )
    max_text_length: int = field(default=2048, metadata={"help": "Text-token limit per row; audio tokens never cut."})
    zero_audio: bool = field(default=False, metadata={"help": "Control run: replace every audio with silence."})
    system_prompt: str = field(
        default=SYSTEM_PROMPT, metadata={"help": "System turn of every row (the pipeline's by default; '' for none)."}
    )
    cache_audio_features: bool = field(
        default=False,
        metadata={"help": "Keep every clip's processed features and frozen-encoder outputs in RAM (exact; ~2 MB per "
                  "clip): later epochs skip decoding and the encoders. For small map-style datasets."},
    )


# ----------------------------------------------------------------------------- CoTA rows -> messages

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_RESPONSE = re.compile(r"<response>(.*?)(?:</response>|$)", re.IGNORECASE | re.DOTALL)


def cota_to_messages(user, assistant, system_prompt=None):
    """One CoTA row as processor messages.

    `<THINK>...</THINK>` becomes `reasoning_content` (its PLANNING/CAPTION/REASONING/SUMMARY sections kept verbatim),
    `<RESPONSE>...</RESPONSE>` the content; text without the markup is the content as is. The `<audio>` placeholder is
    removed from the user text and becomes an audio content item in front of it.
    """
    question = re.sub(r"\s*<audio>\s*", " ", user or "").strip()
    think = _THINK.search(assistant or "")
    response = _RESPONSE.search(assistant or "")
    reasoning = think.group(1).strip() if think else None
    if response:
        answer = response.group(1).strip()
    else:  # no <RESPONSE>: whatever follows the think block (or everything)
        answer = (assistant or "")[think.end():] if think else (assistant or "")
        answer = answer.strip()
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]})
    messages.append({"role": "assistant", "content": answer, "reasoning_content": reasoning or None})
    return messages


# ----------------------------------------------------------------------------- collator


class BadRow(ValueError):
    """A row that cannot be trained on (no audio, undecodable audio, empty answer, nothing left after truncation)."""


class TinyGiantCollator:
    """Turns CoTA rows (`user`, `assistant`, `audio`) into TinyGiant training batches.

    Each row is rendered with the processor's chat template; `labels` are the assistant's tokens (end-of-turn
    included), -100 elsewhere; padding is on the right. Rows longer than `max_text_length` text tokens are cut at
    the end, never inside an audio span (audio placeholders do not count towards the limit).

    Bad rows are skipped and counted (`num_skipped`, also sent along in the batch as `num_skipped_rows` so that the
    trainer can log it even from dataloader workers). If every row of a batch is bad, the last good row this collator
    saw is repeated instead (it is a real, correctly labelled row, so the loss stays well defined and all DDP/ZeRO
    ranks still run the audio path); before any good row has been seen, it searches `fallback_rows` (the training
    set) for one, and only if none of the first `fallback_search` rows is usable does it raise a clear error.

    `cache=True` keeps each row's processed tensors (keyed by audio path or bytes and text; ~2 MB per row): the
    processor is deterministic, so later epochs skip decoding and feature extraction.
    """

    def __init__(self, processor, max_text_length=2048, zero_audio=False, system_prompt=None, fallback_rows=None,
                 fallback_search=1000, cache=False):
        self.processor = processor
        self.max_text_length = max_text_length
        self.zero_audio = zero_audio
        self.system_prompt = system_prompt
        self.fallback_rows = fallback_rows
        self.fallback_search = fallback_search
        self.num_skipped = 0
        self.last_good = None
        self.cache = {} if cache else None

    def __call__(self, rows):
        encoded, skipped = [], 0
        for row in rows:
            try:
                encoded.append(self.encode_row(row))
            except BadRow as error:
                skipped += 1
                logger.warning("skipping a bad row (%s); %d skipped so far", error, self.num_skipped + skipped)
        self.num_skipped += skipped
        if encoded:
            self.last_good = encoded[0]
        else:
            encoded = [self.replacement()]
        batch = self.pad(encoded)
        batch["num_skipped_rows"] = torch.tensor(skipped)
        return batch

    def encode_row(self, row):
        """One row through the processor (cached by audio and text when `cache`), truncated to the text limit."""
        key = self.cache_key(row)
        if key is not None and key in self.cache:
            return self.cache[key]
        text, (waveform, rate) = self.prepare(row)
        encoded = self.truncate(self.processor(
            text=text, audio={"array": waveform, "sampling_rate": rate}, return_labels=True
        ))
        if key is not None:
            self.cache[key] = encoded
        return encoded

    def cache_key(self, row):
        audio = row.get("audio")
        if self.cache is None or not isinstance(audio, dict):
            return None
        source = audio.get("path") if audio.get("bytes") is None else hashlib.sha1(audio["bytes"]).hexdigest()
        return None if source is None else (source, row.get("user"), row.get("assistant"))

    def prepare(self, row):
        """`(rendered text, (waveform, rate))` for one row, or raise `BadRow`."""
        if row.get("audio") is None:
            raise BadRow("row has no audio")
        messages = cota_to_messages(row.get("user"), row.get("assistant"), self.system_prompt)
        if not messages[-1]["content"] and not messages[-1]["reasoning_content"]:
            raise BadRow("row has an empty assistant turn")
        text = self.processor.apply_chat_template(messages, tokenize=False)
        # The limit may only cut the answer: a prompt that alone reaches it leaves nothing to learn.
        prompt = text[: text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")]
        prompt_tokens = len(self.processor.tokenizer(prompt.replace(self.processor.audio_token, ""))["input_ids"])
        if prompt_tokens >= self.max_text_length:
            raise BadRow(f"the prompt has {prompt_tokens} text tokens, over the limit of {self.max_text_length}")
        try:
            audio = row["audio"]
            if isinstance(audio, (list, np.ndarray)):  # a bare float sequence: CoTA's 16 kHz arrays
                waveform, rate = load_audio(np.asarray(audio, dtype=np.float32), 16000)
            else:
                waveform, rate = load_audio(audio)
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            raise BadRow(f"audio cannot be decoded: {error}") from error
        if self.zero_audio:
            waveform = np.zeros_like(waveform)
        return text, (waveform, rate)

    def truncate(self, encoded):
        """Keep at most `max_text_length` text tokens (audio placeholders do not count), never cutting an audio span."""
        ids = encoded["input_ids"][0]
        is_audio = ids == self.processor.audio_token_id
        text_positions = torch.nonzero(~is_audio).flatten()
        if len(text_positions) > self.max_text_length:
            cut = int(text_positions[self.max_text_length])  # the first text token over the limit
            if is_audio.any():
                cut = max(cut, int(torch.nonzero(is_audio).flatten()[-1]) + 1)
            for key in ("input_ids", "attention_mask", "instruction_mask", "labels"):
                encoded[key] = encoded[key][:, :cut]
        return encoded

    def pad(self, encoded):
        """Right-pad the text tensors; audio tensors are per window / per audio, so they are concatenated."""
        pads = {"input_ids": self.processor.tokenizer.pad_token_id, "attention_mask": 0, "instruction_mask": 0,
                "labels": -100}
        batch = {key: pad_sequence([e[key][0] for e in encoded], batch_first=True, padding_value=value)
                 for key, value in pads.items()}
        for key in ("whisper_input_features", "clap_input_features", "whisper_lengths", "htsat_lengths"):
            batch[key] = torch.cat([e[key] for e in encoded])
        return batch

    def replacement(self):
        """A batch of one good row, for a batch in which every row was bad."""
        if self.last_good is None:
            for row in itertools.islice(iter(self.fallback_rows or []), self.fallback_search):
                try:
                    self.last_good = self.encode_row(row)
                    break
                except BadRow:
                    continue
        if self.last_good is None:
            raise RuntimeError(
                f"every row of a batch was bad and none of the first {self.fallback_search} training rows is usable "
                "(no audio, undecodable audio or an empty answer): check the dataset's `audio`, `user` and "
                "`assistant` columns"
            )
        logger.warning("every row of this batch was bad; training on a replacement row instead")
        return self.last_good


class EncoderCache:
    """Memoises `TinyGiantModel.encode_audio` per clip: the encoders are frozen, in eval mode and run without grad, so
    their output for the same input features never changes. Exact, and it saves their cost after the first epoch."""

    def __init__(self, encode_audio):
        self.encode_audio, self.store = encode_audio, {}

    def __call__(self, whisper_input_features, clap_input_features, whisper_lengths, htsat_lengths):
        whisper = whisper_input_features.split(self._windows(whisper_lengths, WHISPER_FRAMES_PER_WINDOW))
        clap = clap_input_features.split(self._windows(htsat_lengths, HTSAT_FRAMES_PER_WINDOW))
        keys = [hashlib.sha1(w.cpu().numpy().tobytes() + c.cpu().numpy().tobytes()).hexdigest() for w, c in zip(whisper, clap)]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            out = self.encode_audio(torch.cat([whisper[i] for i in missing]), torch.cat([clap[i] for i in missing]),
                                    whisper_lengths[missing], htsat_lengths[missing])
            for j, i in enumerate(missing):
                self.store[keys[i]] = tuple(None if o is None else o[j] for o in out)
        rows = [self.store[k] for k in keys]
        return tuple(None if rows[0][n] is None else torch.stack([r[n] for r in rows]) for n in range(3))

    @staticmethod
    def _windows(lengths, frames_per_window):
        return ((lengths + frames_per_window - 1) // frames_per_window).tolist()


# ----------------------------------------------------------------------------- data


def _local_dataset(files):
    """CoTA rows from local JSONL/Parquet files; relative audio paths are resolved against each file's folder."""
    parts = []
    for file in files:
        builder = "parquet" if str(file).endswith(".parquet") else "json"
        ds = load_dataset(builder, data_files=str(file), split="train")
        if "audio" in ds.column_names and getattr(ds.features["audio"], "dtype", None) == "string":
            base = Path(file).resolve().parent
            ds = ds.map(lambda row: {"audio": str(base / row["audio"]) if row["audio"] else None})
        parts.append(_select(ds))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _select(ds):
    """Keep the three CoTA columns; audio as undecoded `{"bytes", "path"}` (the collator decodes, without torchcodec)."""
    missing = {"user", "assistant", "audio"} - set(ds.column_names)
    if missing:
        raise ValueError(f"the dataset has no {sorted(missing)} column(s); CoTA rows need `user`, `assistant`, `audio`")
    ds = ds.select_columns(["user", "assistant", "audio"])
    for column in ("user", "assistant"):  # Parquet may say large_string; one type lets files be concatenated
        if ds.features and ds.features[column] != Value("string"):
            ds = ds.cast_column(column, Value("string"))
    audio = ds.features["audio"] if ds.features else None
    # A bare float list (some CoTA configs, assumed 16 kHz) stays as it is; paths, bytes and Audio are cast.
    if audio is not None and (isinstance(audio, Audio) or getattr(audio, "dtype", None) == "string" or isinstance(audio, dict)):
        ds = ds.cast_column("audio", Audio(decode=False))
    return ds


def _hub_dataset(args, seed):
    """The chosen CoTA configs (`name` or `name:split`), checked against the configs the Hub lists right now."""
    from datasets import get_dataset_config_names, get_dataset_split_names

    available = get_dataset_config_names(args.dataset_name)
    if not args.dataset_config:
        raise ValueError(f"choose --dataset_config among {available} (comma-separated, `name` or `name:split`)")
    parts = []
    for spec in args.dataset_config.split(","):
        name, _, split = spec.strip().partition(":")
        if name not in available:
            raise ValueError(f"{args.dataset_name} has no config {name!r}; available configs: {available}")
        split = split or args.dataset_train_split
        splits = get_dataset_split_names(args.dataset_name, name)
        if split not in splits:
            raise ValueError(f"config {name!r} has no split {split!r}; its splits: {splits} (write `{name}:<split>`)")
        logger.info("loading %s / %s / %s (streaming=%s)", args.dataset_name, name, split, args.streaming)
        parts.append(_select(load_dataset(args.dataset_name, name, split=split, streaming=args.streaming)))
    ds = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if args.streaming:
        ds = ds.shuffle(seed=seed, buffer_size=args.shuffle_buffer)
    return ds


def load_training_data(args, seed=42):
    """`(train, eval or None)`: local files if given, else the Hub dataset."""
    train = _local_dataset(args.dataset_files) if args.dataset_files else _hub_dataset(args, seed)
    if args.max_train_samples:
        train = train.take(args.max_train_samples)
    eval_ = _local_dataset(args.eval_files) if args.eval_files else None
    return train, eval_


# ----------------------------------------------------------------------------- trainer


class TinyGiantSFTTrainer(SFTTrainer):
    """SFTTrainer with the projector's own learning rate and a count of the skipped rows in every log."""

    def __init__(self, *args, projector_learning_rate=1e-4, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.skipped_rows = torch.zeros((), dtype=torch.long)
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        # Built here, from the model as it is now (after PEFT wrapping): param groups made before the trainer wraps
        # the model hold stale parameters and silently train nothing.
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(self.model))
            groups = {}
            for name, param in self.model.named_parameters():
                if not param.requires_grad:
                    continue
                lr = self.projector_learning_rate if ".projector." in f".{name}" else self.args.learning_rate
                wd = self.args.weight_decay if name in decay else 0.0
                groups.setdefault((lr, wd), []).append(param)
            self.optimizer = torch.optim.AdamW(
                [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def compute_loss(self, model, inputs, *args, **kwargs):
        # The collator (possibly in a worker process) reports its skipped rows through the batch.
        skipped = inputs.pop("num_skipped_rows", None)
        if skipped is not None and model.training:
            self.skipped_rows += int(skipped)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs.pop("num_skipped_rows", None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        # Every rank calls log() at the same points, so the sum over processes is safe here.
        total = self.accelerator.reduce(self.skipped_rows.to(self.accelerator.device), reduction="sum")
        logs["skipped_rows"] = int(total)
        super().log(logs, *args, **kwargs)


def gradient_accumulation_for(effective_batch_size, per_device, world_size):
    """Gradient accumulation steps giving `effective_batch_size`, or a clear error if it does not divide."""
    per_step = per_device * world_size
    if effective_batch_size % per_step:
        raise ValueError(
            f"effective batch {effective_batch_size} is not a multiple of per-device batch {per_device} x {world_size} "
            f"process(es) = {per_step}; choose a per-device batch that divides {effective_batch_size // world_size if effective_batch_size % world_size == 0 else effective_batch_size} "
            "or pass --effective_batch_size 0 to use --gradient_accumulation_steps as given"
        )
    return effective_batch_size // per_step


def lora_config(model_args):
    """LoRA on the LLM's projections only; the projector is trained in full (`modules_to_save`)."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or LORA_TARGETS,
        modules_to_save=["projector", *(model_args.lora_modules_to_save or [])],
        use_rslora=model_args.use_rslora, use_dora=model_args.use_dora,
    )


def load_model(script_args, model_args):
    """A TinyGiant checkpoint (`--model_name_or_path`) or a fresh one from the four pretrained parts."""
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else None
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if model_args.model_name_or_path:
        kwargs = {"revision": model_args.model_revision, "dtype": dtype}
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        model = TinyGiantForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)
        processor = TinyGiantProcessor.from_pretrained(
            model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=True
        )
        return model, processor
    return TinyGiantForConditionalGeneration.from_components(
        whisper=script_args.whisper, htsat=script_args.htsat, clap=script_args.clap, llm=script_args.llm, dtype=dtype,
        use_intent_query=script_args.use_intent_query, use_clap_gate=script_args.use_clap_gate,
    )


class MetricsLogger(TrainerCallback):
    """Appends every log line as JSON to `<output_dir>/log_history.jsonl` (the demo plots the loss from it)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "log_history.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def save_final(model, processor, output_dir, summary, script_args):
    """The merged model as a complete, loadable repo folder (publish_tinygiant's if it is there)."""
    try:
        from publish_tinygiant import save_hub_folder
    except ImportError:
        save_hub_folder = None
    if save_hub_folder is not None:
        return Path(save_hub_folder(model, processor, output_dir, training_summary=summary))
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return Path(output_dir)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    parser.set_defaults_with_config(**PAPER_DEFAULTS)
    return parser.parse_args_and_config(args=argv)


def main(script_args, training_args, model_args, callbacks=None):
    """Train, then save the merged model to `output_dir` (and push it); returns `(trainer, train metrics)`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if training_args.push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. you/tinygiant)")
        try:
            import publish_tinygiant  # noqa: F401  (fail now, not after hours of training)
        except ImportError as error:
            raise ImportError("--push_to_hub needs publish_tinygiant.py next to train_sft.py") from error
    push, training_args.push_to_hub = training_args.push_to_hub, False  # Trainer would push partial checkpoints

    # TRL's own dataset preparation and truncation are text-only; the collator does both for audio.
    training_args.max_length = None
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    if script_args.effective_batch_size:
        training_args.gradient_accumulation_steps = gradient_accumulation_for(
            script_args.effective_batch_size, training_args.per_device_train_batch_size, training_args.world_size
        )
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # paper: bf16 + TF32

    train_dataset, eval_dataset = load_training_data(script_args, seed=training_args.seed)
    if isinstance(train_dataset, IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("a streamed dataset has no length: pass --max_steps")
    model, processor = load_model(script_args, model_args)
    collator = TinyGiantCollator(
        processor, max_text_length=script_args.max_text_length, zero_audio=script_args.zero_audio,
        system_prompt=script_args.system_prompt, fallback_rows=train_dataset, cache=script_args.cache_audio_features,
    )
    if script_args.cache_audio_features:
        model.model.encode_audio = EncoderCache(model.model.encode_audio)
    trainer = TinyGiantSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=lora_config(model_args) if model_args.use_peft else None,
        callbacks=[MetricsLogger(), *(callbacks or [])],
        projector_learning_rate=script_args.projector_learning_rate,
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint in output_dir
    logger.info("training with world_size=%d, gradient_accumulation_steps=%d", training_args.world_size,
                training_args.gradient_accumulation_steps)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**result.metrics, "skipped_rows": int(trainer.accelerator.reduce(
        trainer.skipped_rows.to(trainer.accelerator.device), reduction="sum"))}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)

    # The final model: LoRA merged into the LLM, saved as a plain TinyGiant checkpoint.
    trainer.accelerator.wait_for_everyone()
    summary = {"metrics": metrics, "args": {k: v for k, v in vars(script_args).items()}, "peft": model_args.use_peft,
               "global_step": trainer.state.global_step}
    if (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled) and not model_args.use_peft:
        trainer.save_model(training_args.output_dir)  # gathers the sharded weights
        if trainer.is_world_process_zero():
            processor.save_pretrained(training_args.output_dir)
        folder = Path(training_args.output_dir)
    elif trainer.is_world_process_zero():
        final = trainer.model.merge_and_unload() if model_args.use_peft else trainer.model
        final.model.freeze_audio_encoders()
        folder = save_final(final, processor, training_args.output_dir, summary, script_args)
    trainer.accelerator.wait_for_everyone()
    if push and trainer.is_world_process_zero():
        from publish_tinygiant import push_to_hub

        push_to_hub(folder, training_args.hub_model_id, token=training_args.hub_token,
                    private=training_args.hub_private_repo)
    logger.info("done: %s (skipped rows: %d)", training_args.output_dir, metrics["skipped_rows"])
    return trainer, metrics


if __name__ == "__main__":
    main(*parse_args())
