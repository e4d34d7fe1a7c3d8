"""Supervised fine-tuning of TinyGiant on CoTA-format audio reasoning data with TRL's `SFTTrainer`.

Shaped like TRL's `examples/scripts/sft_vlm.py`. TRL has no audio support, so the data and the collator come from
`tinygiant.training.data` and TRL is told to leave the dataset alone.

# Paper recipe (section 4.2) from the pretrained parts, 8 GPUs, effective batch 32:
accelerate launch --config_file accelerate_configs/multi_gpu.yaml train_sft.py \
    --dataset_config complex_audio --streaming --max_steps 20000 \
    --per_device_train_batch_size 4 --output_dir runs/tinygiant-sft

# Continue from a TinyGiant checkpoint, with LoRA on the LLM (projector fully trained), pushed to the Hub at the end;
# --save_adapter also keeps the adapter unmerged in OUTPUT_DIR/adapter/ (e.g. for vLLM's multi-LoRA serving):
accelerate launch --config_file accelerate_configs/zero2.yaml train_sft.py \
    --model_name_or_path you/tinygiant --dataset_config complex_audio --streaming --max_steps 5000 \
    --use_peft --lora_r 64 --lora_alpha 128 --save_adapter --push_to_hub --hub_model_id you/tinygiant-lora-merged

# Offline, on local CoTA-format files (JSONL or Parquet; audio as a path relative to the file, bytes, or 16 kHz floats):
python train_sft.py --model_name_or_path tiny --dataset_files data/train.jsonl --bf16 false --use_cpu

# Two CPU processes (gloo), e.g. to check DDP without GPUs:
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train_sft.py --use_cpu ...

Defaults changed from TRL's `SFTConfig` (the paper recipe; override any of them on the command line):
`learning_rate` 5e-5 (the LLM's; `--projector_learning_rate` 1e-4 is the projector's, a separate AdamW group),
`num_train_epochs` 3, `effective_batch_size` 32 (sets `gradient_accumulation_steps`), `per_device_train_batch_size` 4,
`output_dir` runs/tinygiant-sft, `logging_steps` 10, `save_steps` 500; TF32 is switched on when CUDA is there.
Kept from TRL: `bf16=True` and checkpointing of the LLM's activations (`--activation_checkpointing`, even on CPU;
pass `--bf16 false` there for speed). Forced, because the collator does the work: `max_length=None`,
`remove_unused_columns=False`, `dataset_kwargs={"skip_prepare_dataset": True}`. `--push_to_hub` pushes no checkpoints
during training: the complete, merged, loadable repo is pushed at the end. `--feature_cache_dir DIR` keeps the frozen
encoders' outputs per clip on disk (`tinygiant.training.feature_cache`): a clip's encoders run once, in whichever run
first sees it. The output_dir ends up a complete checkpoint folder (`pipeline("audio-reasoning", model=output_dir,
trust_remote_code=True)` works on it).
"""

import logging
import sys
from dataclasses import dataclass, field

import torch
from datasets import IterableDataset
from trl import ModelConfig, SFTConfig, TrlParser

from parsing_tinygiant import SYSTEM_PROMPT
from processing_tinygiant import build_chat_template
from tinygiant.hub.assemble import CLAP, HTSAT, LLM, WHISPER
from tinygiant.training.data import COTA_REPO, TinyGiantCollator, load_cota
from tinygiant.training.feature_cache import AudioFeatureCache
from tinygiant.training.trainer import (
    MetricsLogger,
    ProgressLines,
    TinyGiantSFTTrainer,
    gradient_accumulation_for,
    load_model,
    lora_config,
    save_final,
)

logger = logging.getLogger("train_sft")

PAPER_DEFAULTS = dict(
    learning_rate=5e-5, num_train_epochs=3, per_device_train_batch_size=4, output_dir="runs/tinygiant-sft",
    logging_steps=10, save_steps=500, report_to="none",
    # transformers renamed gradient checkpointing; TRL's default still sets the old name.
    activation_checkpointing=True, gradient_checkpointing=None,
)


@dataclass
class ScriptArguments:
    """Data, model parts and the TinyGiant-specific switches (TRL's SFTConfig and ModelConfig hold the rest)."""

    dataset_name: str = field(default=COTA_REPO,
                              metadata={"help": "Hub dataset in CoTA format (user/assistant/audio)."})
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
    streaming: bool = field(default=False,
                            metadata={"help": "Stream the Hub dataset (CoTA is terabytes); needs --max_steps."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "Shuffle buffer when streaming."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    whisper: str = field(default=WHISPER, metadata={"help": "Whisper part (without --model_name_or_path)."})
    htsat: str = field(default=HTSAT, metadata={"help": "HTS-AT part (without --model_name_or_path)."})
    clap: str = field(default=CLAP, metadata={"help": "CLAP part (without --model_name_or_path)."})
    llm: str = field(default=LLM, metadata={"help": "LLM part (without --model_name_or_path)."})
    use_intent_query: bool = field(default=True, metadata={"help": "Ablation switch (only when building from parts)."})
    use_clap_gate: bool = field(default=True, metadata={"help": "Ablation switch (only when building from parts)."})
    projector_learning_rate: float = field(default=1e-4, metadata={"help": "AdamW LR of the projector."})
    effective_batch_size: int | None = field(
        default=32, metadata={"help": "Global batch; sets gradient_accumulation_steps. 0 = use the given GA steps."}
    )
    max_text_length: int = field(default=2048, metadata={"help": "Text-token limit per row; audio tokens never cut."})
    zero_audio: bool = field(default=False, metadata={"help": "Control run: replace every audio with silence."})
    system_prompt: str = field(
        default=SYSTEM_PROMPT,
        metadata={"help": "System turn of every row (Audio-Reasoner's by default; '' for none). The saved checkpoint's "
                  "chat template makes it the default system turn, so every way in asks as the model was trained."}
    )
    save_adapter: bool = field(
        default=False,
        metadata={"help": "With --use_peft: also save the LoRA adapter unmerged in OUTPUT_DIR/adapter/ (PEFT format), "
                  "beside the merged checkpoint."},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the frozen encoders' outputs per clip, read and filled as training goes (exact; "
                  "2.4 MB per clip at full size in float32): a cached clip never runs the encoders again, in this run "
                  "or later ones. Unset: the encoders run on every step."},
    )


def parse_args(argv: list[str] | None = None) -> tuple:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg.split("=")[0] in ("--gradient_checkpointing", "--gradient_checkpointing_kwargs") for arg in argv):
        # transformers would ignore the old name beside the new one's default: refuse rather than drop it silently.
        raise ValueError("--gradient_checkpointing is deprecated in transformers: use --activation_checkpointing")
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    parser.set_defaults_with_config(**PAPER_DEFAULTS)
    return parser.parse_args_and_config(args=argv)


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig,
         callbacks: list | None = None) -> tuple:
    """Train, then save the merged model to `output_dir` (and push it); returns `(trainer, train metrics)`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. you/tinygiant)")
    if script_args.save_adapter and not model_args.use_peft:
        raise ValueError("--save_adapter saves a LoRA adapter: it needs --use_peft")
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

    # Data
    train_dataset = load_cota(script_args.dataset_files, script_args.dataset_name, script_args.dataset_config,
                              script_args.dataset_train_split, script_args.streaming, script_args.shuffle_buffer,
                              seed=training_args.seed)
    if script_args.max_train_samples:
        train_dataset = train_dataset.take(script_args.max_train_samples)
    if isinstance(train_dataset, IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("a streamed dataset has no length: pass --max_steps")
    eval_dataset = load_cota(script_args.eval_files) if script_args.eval_files else None

    # Model, processor and collator
    parts = {name: getattr(script_args, name) for name in ("whisper", "htsat", "clap", "llm")}
    model, processor = load_model(model_args, parts, use_intent_query=script_args.use_intent_query,
                                  use_clap_gate=script_args.use_clap_gate)
    # The checkpoint carries the prompt it is trained with: its chat template's default system turn.
    processor.chat_template = build_chat_template(script_args.system_prompt)
    # Under DDP every rank reads and writes the same cache; writes are atomic, so a clip two ranks encode at once is
    # merely encoded twice.
    feature_cache = (AudioFeatureCache(script_args.feature_cache_dir, model, processor)
                     if script_args.feature_cache_dir else None)
    collator = TinyGiantCollator(
        processor, max_text_length=script_args.max_text_length, zero_audio=script_args.zero_audio,
        system_prompt=script_args.system_prompt, fallback_rows=train_dataset, feature_cache=feature_cache,
    )

    # Training
    trainer = TinyGiantSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=lora_config(model_args) if model_args.use_peft else None,
        callbacks=[MetricsLogger(), ProgressLines(), *(callbacks or [])],
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

    # Save (LoRA merged into the LLM) and push
    summary = {"metrics": metrics, "args": vars(script_args), "peft": model_args.use_peft,
               "global_step": trainer.state.global_step}
    folder = save_final(trainer, processor, training_args.output_dir, summary, model_args.use_peft,
                        save_adapter=script_args.save_adapter)
    if push and trainer.is_world_process_zero():
        from tinygiant.hub.publish import push_to_hub

        push_to_hub(folder, training_args.hub_model_id, token=training_args.hub_token,
                    private=training_args.hub_private_repo)
    logger.info("done: %s (skipped rows: %d)", training_args.output_dir, metrics["skipped_rows"])
    return trainer, metrics


if __name__ == "__main__":
    main(*parse_args())
