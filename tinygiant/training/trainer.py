"""What TinyGiant's TRL trainers share, and the SFT trainer: two learning rates (`ProjectorLearningRate`), model
loading, LoRA on the LLM only, progress lines, and the final save as a complete checkpoint folder. The GRPO trainer
(`tinygiant.training.grpo`) builds on the same pieces."""

import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import ModelConfig, SFTTrainer

from modeling_tinygiant import TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor
from tinygiant.hub.publish import save_checkpoint

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

# The LLM's attention and MLP projections, and nothing in the encoders or the projector.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Where `save_final(..., save_adapter=True)` puts the unmerged LoRA adapter inside the output folder.
ADAPTER_FOLDER = "adapter"
# Counts the collator sends along in each batch (it may run in a dataloader worker), and their names in the logs.
COLLATOR_COUNTS = {"num_skipped_rows": "skipped_rows", "num_feature_cache_hits": "feature_cache_hits",
                   "num_feature_cache_misses": "feature_cache_misses"}


class ProjectorLearningRate:
    """A `Trainer` mixin: AdamW with the projector in its own parameter group at `projector_learning_rate` (the paper's
    1e-4) and everything else trainable at `args.learning_rate`. Set `projector_learning_rate` before `__init__`."""

    projector_learning_rate: float

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
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
                lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer


class TinyGiantSFTTrainer(ProjectorLearningRate, SFTTrainer):
    """SFTTrainer with the projector's own learning rate and the collator's counts (skipped rows, feature cache hits
    and misses) in every log."""

    def __init__(self, *args, projector_learning_rate=1e-4, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.counts = {name: torch.zeros((), dtype=torch.long) for name in COLLATOR_COUNTS.values()}
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict, *args, **kwargs) -> torch.Tensor:
        for key, name in COLLATOR_COUNTS.items():
            count = inputs.pop(key, None)
            if count is not None and model.training:
                self.counts[name] += int(count)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model: torch.nn.Module, inputs: dict, *args, **kwargs) -> tuple:
        for key in COLLATOR_COUNTS:
            inputs.pop(key, None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def total_counts(self) -> dict[str, int]:
        """The collator's counts summed over all processes; every rank must call this at the same point."""
        device = self.accelerator.device
        return {name: int(self.accelerator.reduce(count.to(device), reduction="sum"))
                for name, count in self.counts.items()}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        logs.update(self.total_counts())  # every rank calls log() at the same points
        super().log(logs, *args, **kwargs)


def gradient_accumulation_for(effective_batch_size: int, per_device: int, world_size: int) -> int:
    """Gradient accumulation steps giving `effective_batch_size`, or a clear error if it does not divide."""
    per_step = per_device * world_size
    if effective_batch_size % per_step:
        divisor = effective_batch_size // world_size if effective_batch_size % world_size == 0 else effective_batch_size
        raise ValueError(
            f"effective batch {effective_batch_size} is not a multiple of per-device batch {per_device} x {world_size} "
            f"process(es) = {per_step}; choose a per-device batch that divides {divisor} "
            "or pass --effective_batch_size 0 to use --gradient_accumulation_steps as given"
        )
    return effective_batch_size // per_step


def lora_config(model_args: ModelConfig) -> "LoraConfig":
    """LoRA on the LLM's projections only (TRL's `ModelConfig` flags); the projector is trained in full."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or LORA_TARGETS,
        modules_to_save=["projector", *(model_args.lora_modules_to_save or [])],
        use_rslora=model_args.use_rslora, use_dora=model_args.use_dora,
    )


def load_model(model_args: ModelConfig, parts: dict[str, str], **config_kwargs) -> tuple:
    """`(model, processor)`: the TinyGiant checkpoint `model_args.model_name_or_path`, or, without one, a fresh
    TinyGiant from the pretrained `parts` (`{"whisper", "htsat", "clap", "llm"}`) with `config_kwargs`."""
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else None
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not model_args.model_name_or_path:
        from tinygiant.hub.assemble import from_components

        return from_components(**parts, dtype=dtype, **config_kwargs)
    kwargs = {"revision": model_args.model_revision, "dtype": dtype}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = TinyGiantForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)
    processor = TinyGiantProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=True
    )
    return model, processor


class MetricsLogger(TrainerCallback):
    """Appends every log line as JSON to `<output_dir>/log_history.jsonl` (the demo plots the loss from it)."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if state.is_world_process_zero and logs:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "log_history.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class ProgressLines(TrainerCallback):
    """One line per logging step when the progress bar is off (`--disable_tqdm true`, e.g. output to a file or a
    pipe): `step 40/2000 (2%) | loss 0.5312 | 1:02 elapsed | ETA 50:40`."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs) -> None:
        self.start, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if not (args.disable_tqdm and state.is_world_process_zero and logs and "loss" in logs):
            return
        elapsed, done = time.monotonic() - self.start, state.global_step - self.first_step
        eta = elapsed / done * (state.max_steps - state.global_step) if done else None
        print(f"{_step(state)} | loss {logs['loss']:.4f} | {_clock(elapsed)} elapsed | ETA {_clock(eta)}", flush=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs) -> None:
        if args.disable_tqdm and state.is_world_process_zero:
            print(f"{_step(state)} | done in {_clock(time.monotonic() - self.start)}", flush=True)


def _step(state):
    return f"step {state.global_step}/{state.max_steps} ({state.global_step / max(state.max_steps, 1):.0%})"


def _clock(seconds):
    return "?" if seconds is None else str(timedelta(seconds=round(seconds))).removeprefix("0:")


def save_final(trainer: Trainer, processor: TinyGiantProcessor, output_dir: str, summary: dict, use_peft: bool,
               save_adapter: bool = False) -> Path | None:
    """The trained model (LoRA merged into the LLM) as a complete checkpoint folder in `output_dir`; returns it.

    With `save_adapter` (LoRA runs only), the adapter is also saved unmerged in `output_dir/adapter/` (PEFT's
    `adapter_config.json` and `adapter_model.safetensors`, the projector among its `modules_to_save`), for loading
    onto the base checkpoint or serving several fine-tunes of one base. Sharded runs (FSDP, ZeRO-3) save through the
    trainer, which gathers the weights; then process 0 writes the rest of the folder around them.
    """
    if save_adapter and not use_peft:
        raise ValueError("--save_adapter saves a LoRA adapter: it needs --use_peft")
    trainer.accelerator.wait_for_everyone()
    folder = None
    if save_adapter and trainer.is_world_process_zero():
        save_adapter_folder(trainer.model, Path(output_dir) / ADAPTER_FOLDER)
    if (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled) and not use_peft:
        trainer.save_model(output_dir)
        if trainer.is_world_process_zero():
            from tinygiant.hub.publish import complete_folder

            processor.save_pretrained(output_dir)
            folder = complete_folder(output_dir, training_summary=summary)
    elif trainer.is_world_process_zero():
        final = trainer.model.merge_and_unload() if use_peft else trainer.model
        final.model.freeze_audio_encoders()
        folder = save_checkpoint(final, processor, output_dir, training_summary=summary)
    trainer.accelerator.wait_for_everyone()
    return folder


def save_adapter_folder(peft_model: "PeftModel", folder: Path) -> Path:
    """The PEFT model's adapter, unmerged, written beside `folder` and moved into place whole."""
    from tinygiant.files import partial_path

    staging = partial_path(folder)
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder
