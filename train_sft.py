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
`--feature_cache_dir DIR` keeps the frozen encoders' outputs per clip on disk (`feature_cache_tinygiant`): a clip's
encoders run once, in whichever run first sees it, and never again while the cache is there.
"""

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

from feature_cache_tinygiant import AudioFeatureCache
from modeling_tinygiant import AUDIO_INPUTS, TinyGiantForConditionalGeneration
from pipeline_tinygiant import SYSTEM_PROMPT  # the pipeline's prompt, so that training and inference match
from processing_tinygiant import TinyGiantProcessor, load_audio

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
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the frozen encoders' outputs per clip, read and filled as training goes (exact; "
                  "2.4 MB per clip at full size in float32): a cached clip never runs the encoders again, in this run "
                  "or later ones. Unset: the encoders run on every step."},
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

    With a `feature_cache` (an `AudioFeatureCache`), batches carry the encoders' outputs (`whisper_frames`,
    `htsat_frames`, `clap_vector`) instead of the mels, so the model skips its encoders. Clips not in the cache yet are
    encoded here, from the mels the processor made, and stored (clips already cached get no mels at all); the batch
    counts both (`num_feature_cache_hits`, `num_feature_cache_misses`). Encoding here needs the encoders usable
    outside the training step: not sharded (FSDP, ZeRO-3) and, on GPUs, no dataloader worker processes; otherwise
    fill the cache first with `AudioFeatureCache.encode`.
    """

    def __init__(self, processor, max_text_length=2048, zero_audio=False, system_prompt=None, fallback_rows=None,
                 fallback_search=1000, feature_cache=None):
        self.processor = processor
        self.max_text_length = max_text_length
        self.zero_audio = zero_audio
        self.system_prompt = system_prompt
        self.fallback_rows = fallback_rows
        self.fallback_search = fallback_search
        self.num_skipped = 0
        self.last_good = None
        self.feature_cache = feature_cache

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
        """One row through the processor, truncated to the text limit; with a feature cache, its clip's key too."""
        text, (waveform, rate) = self.prepare(row)
        audio = {"array": waveform, "sampling_rate": rate}
        key = None if self.feature_cache is None else self.feature_cache.key(audio)
        cached = key is not None and key in self.feature_cache  # then no mels: the model will not run its encoders
        encoded = self.truncate(self.processor(text=text, audio=audio, return_labels=True,
                                               extract_audio_features=not cached))
        if key is not None:
            encoded["audio_key"] = key
        return encoded

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
        if self.feature_cache is None:
            batch.update({key: torch.cat([e[key] for e in encoded]) for key in AUDIO_INPUTS})
        else:
            features, misses = self.cached_features(encoded)
            batch.update(features, num_feature_cache_hits=torch.tensor(len(encoded) - misses),
                         num_feature_cache_misses=torch.tensor(misses))
        return batch

    def cached_features(self, encoded):
        """`(features, misses)`: the rows' encoder features from the feature cache, and how many clips were not in it
        (those are encoded first, from the mels the processor made, and stored)."""
        keys = [e["audio_key"] for e in encoded]
        features = {key: self.feature_cache.get(key) for key in dict.fromkeys(keys)}
        missing = {e["audio_key"]: e for e in encoded if features[e["audio_key"]] is None}
        if missing:
            mels = {name: torch.cat([e[name] for e in missing.values()]) for name in AUDIO_INPUTS}
            features.update(self.feature_cache.encode_features(list(missing), **mels))
        return {name: torch.stack([features[key][name] for key in keys]) for name in features[keys[0]]}, len(missing)

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


# Counts the collator sends along in each batch (it may run in a dataloader worker), and their names in the logs.
COLLATOR_COUNTS = {"num_skipped_rows": "skipped_rows", "num_feature_cache_hits": "feature_cache_hits",
                   "num_feature_cache_misses": "feature_cache_misses"}


class TinyGiantSFTTrainer(SFTTrainer):
    """SFTTrainer with the projector's own learning rate and the collator's counts (skipped rows, feature cache hits
    and misses) in every log."""

    def __init__(self, *args, projector_learning_rate=1e-4, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.counts = {name: torch.zeros((), dtype=torch.long) for name in COLLATOR_COUNTS.values()}
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
        for key, name in COLLATOR_COUNTS.items():
            count = inputs.pop(key, None)
            if count is not None and model.training:
                self.counts[name] += int(count)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, *args, **kwargs):
        for key in COLLATOR_COUNTS:
            inputs.pop(key, None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def total_counts(self):
        """The collator's counts summed over all processes; every rank must call this at the same point."""
        device = self.accelerator.device
        return {name: int(self.accelerator.reduce(count.to(device), reduction="sum"))
                for name, count in self.counts.items()}

    def log(self, logs, *args, **kwargs):
        logs.update(self.total_counts())  # every rank calls log() at the same points
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
    # Under DDP every rank reads and writes the same cache; writes are atomic, so a clip two ranks encode at once is
    # merely encoded twice.
    feature_cache = None
    if script_args.feature_cache_dir:
        feature_cache = AudioFeatureCache(script_args.feature_cache_dir, model, processor)
    collator = TinyGiantCollator(
        processor, max_text_length=script_args.max_text_length, zero_audio=script_args.zero_audio,
        system_prompt=script_args.system_prompt, fallback_rows=train_dataset, feature_cache=feature_cache,
    )
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
    metrics = {**result.metrics, **trainer.total_counts()}
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
