"""Reinforcement learning of TinyGiant with GRPO on TRL's `GRPOTrainer`, the audio carried end to end.

Shaped like TRL's `examples/scripts/grpo_vlm.py` and like `train_sft.py`. It starts from a TinyGiant checkpoint,
normally an SFT one. TRL's trainer carries images only; `tinygiant.training.grpo.TinyGiantGRPOTrainer` carries each
prompt's audio through generation and the old-policy, reference and policy log-prob passes, running the frozen encoders
once per clip per step. Rewards are plain TRL reward functions (`tinygiant.training.rewards`).

# Multiple-choice rows {"audio", "question", "choices", "answer"} (JSONL or Parquet, audio relative to the file):
accelerate launch --config_file accelerate_configs/multi_gpu.yaml train_grpo.py \
    --model_name_or_path you/tinygiant-sft --dataset_files data/train.jsonl --output_dir runs/tinygiant-grpo \
    --num_generations 8 --max_completion_length 512 --per_device_train_batch_size 8 --max_steps 1000

# MMAR's or MMAU's metadata format, with the audio folder; LoRA on the LLM (merged on save), pushed at the end:
accelerate launch train_grpo.py --model_name_or_path you/tinygiant-sft --dataset_files mmau-train.json \
    --audio_dir mmau --use_peft --lora_r 64 --lora_alpha 128 --push_to_hub --hub_model_id you/tinygiant-r1

# A Hub dataset through `datasets` (its columns: audio, question, choices, answer):
accelerate launch train_grpo.py --model_name_or_path you/tinygiant-sft --dataset_name you/avqa-mc ...

# Offline, on a CPU:
accelerate launch --num_processes 1 --cpu train_grpo.py --model_name_or_path tiny --dataset_files rows.jsonl \
    --output_dir out --max_steps 2 --num_generations 2 --per_device_train_batch_size 2 \
    --max_completion_length 24 --bf16 false --use_cpu --report_to none

Defaults changed from TRL's `GRPOConfig` (Ke-Omni-R's recipe; override any on the command line): `beta` 0.01 (KL to
the starting model), `reward_weights` 2:1 for accuracy and format, `learning_rate` 1e-6 for the LLM (R1-AQA's and
Ke-Omni-R's) and `--projector_learning_rate` 2e-6 (SFT's 2:1 ratio between the two), `num_generations` 8,
`max_completion_length` 512, `output_dir` runs/tinygiant-grpo, `logging_steps` 10, `save_steps` 500, and
`disable_dropout` (the projector's dropout would make the policy's log-probs disagree with the old policy's and the
reference's on the same tokens). `--rewards`
picks the reward functions (accuracy, format, length, judge). `--system_prompt` is the system turn of every prompt;
the checkpoint's chat template carries it as its default, so the saved model is asked as it was trained (unset: the
starting checkpoint's own default). Generation runs on transformers' `generate` (CPU or GPU); `--use_vllm` is refused:
docs/grpo.md says why. The output_dir ends up a complete checkpoint folder.
"""

import logging
import sys
from dataclasses import dataclass, field

from datasets import IterableDataset
from trl import GRPOConfig, ModelConfig, TrlParser

from processing_tinygiant import build_chat_template
from tinygiant.training.feature_cache import AudioFeatureCache
from tinygiant.training.grpo import TinyGiantGRPOTrainer
from tinygiant.training.multiple_choice import SkippedRows, load_multiple_choice
from tinygiant.training.rewards import RubricJudgeReward, accuracy_reward, format_reward, length_reward
from tinygiant.training.trainer import MetricsLogger, ProgressLines, load_model, lora_config, save_final

logger = logging.getLogger("train_grpo")

GRPO_DEFAULTS = dict(
    learning_rate=1e-6, beta=0.01, num_generations=8, max_completion_length=512, output_dir="runs/tinygiant-grpo",
    logging_steps=10, save_steps=500, report_to="none", disable_dropout=True,
    activation_checkpointing=False, gradient_checkpointing=None,
)
REWARD_NAMES = ("accuracy", "format", "length", "judge")


@dataclass
class ScriptArguments:
    """Data, rewards and the TinyGiant-specific switches (TRL's GRPOConfig and ModelConfig hold the rest)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset of multiple-choice rows."})
    dataset_config: str | None = field(default=None, metadata={"help": "Its config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Its split."})
    dataset_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local .jsonl/.json/.parquet files of multiple-choice rows (or MMAR/MMAU meta)."},
    )
    audio_dir: str | None = field(
        default=None, metadata={"help": "Folder that relative audio paths start from (default: each file's folder)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the Hub dataset; needs --max_steps."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    projector_learning_rate: float = field(default=2e-6, metadata={"help": "AdamW LR of the projector."})
    rewards: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Reward functions, among {list(REWARD_NAMES)}; weights: --reward_weights."},
    )
    max_think_words: int = field(default=50, metadata={"help": "The length reward's word budget for the think block."})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint of the judge."})
    judge_model: str = field(default="gpt-4o-2024-11-20", metadata={"help": "The judge model."})
    judge_qps: float | None = field(default=None, metadata={"help": "Requests started per second at most."})
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System turn of every prompt ('' for none); written into the saved chat template as its "
                  "default. Unset: the starting checkpoint's default."},
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of the frozen encoders' outputs per clip, read and filled as it goes."}
    )
    save_adapter: bool = field(
        default=False, metadata={"help": "With --use_peft: also save the LoRA adapter unmerged in OUTPUT_DIR/adapter/."}
    )


def parse_args(argv: list[str] | None = None) -> tuple:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg.split("=")[0] in ("--gradient_checkpointing", "--gradient_checkpointing_kwargs") for arg in argv):
        raise ValueError("--gradient_checkpointing is deprecated in transformers: use --activation_checkpointing")
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    parser.set_defaults_with_config(**GRPO_DEFAULTS)
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if training_args.reward_weights is None and script_args.rewards[:2] == ["accuracy", "format"]:
        training_args.reward_weights = [2.0, 1.0, *[1.0] * (len(script_args.rewards) - 2)]  # Ke-Omni-R's 2:1
    return script_args, training_args, model_args


def reward_functions(script_args: ScriptArguments, output_dir: str) -> list:
    """The reward functions `--rewards` names, in order."""
    unknown = sorted(set(script_args.rewards) - set(REWARD_NAMES))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; choose among {list(REWARD_NAMES)}")
    functions = []
    for name in script_args.rewards:
        if name == "accuracy":
            functions.append(accuracy_reward)
        elif name == "format":
            functions.append(format_reward)
        elif name == "length":
            functions.append(length_reward(script_args.max_think_words))
        else:
            from tinygiant.eval.rubrics import Judge

            judge = Judge(script_args.judge_base_url, model=script_args.judge_model, qps=script_args.judge_qps)
            functions.append(RubricJudgeReward(judge, f"{output_dir}/judge_rewards.jsonl"))
    return functions


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
         callbacks: list | None = None) -> tuple:
    """Train, then save the merged model to `output_dir` (and push it); returns `(trainer, train metrics)`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not model_args.model_name_or_path:
        raise ValueError("GRPO starts from a TinyGiant checkpoint: pass --model_name_or_path (normally an SFT one)")
    if training_args.use_vllm:
        raise ValueError("--use_vllm cannot carry TinyGiant's audio through TRL's vLLM paths yet; see docs/grpo.md")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. you/tinygiant-r1)")
    if script_args.save_adapter and not model_args.use_peft:
        raise ValueError("--save_adapter saves a LoRA adapter: it needs --use_peft")
    push, training_args.push_to_hub = training_args.push_to_hub, False  # Trainer would push partial checkpoints
    training_args.remove_unused_columns = False  # the audio, choices and answer columns reach the trainer
    # The reference model (beta > 0, no LoRA) is loaded by TRL with the checkpoint's own code; left to choose, each
    # part takes the attention it supports (TRL would force the policy's top-level one on the CLAP towers).
    training_args.trust_remote_code = True
    training_args.model_init_kwargs = {"attn_implementation": model_args.attn_implementation}

    # Data
    skipped = SkippedRows()
    train_dataset = load_multiple_choice(script_args.dataset_files, script_args.dataset_name,
                                         script_args.dataset_config, script_args.dataset_train_split,
                                         script_args.audio_dir, script_args.streaming, skipped)
    if script_args.max_train_samples:
        train_dataset = train_dataset.take(script_args.max_train_samples)
    if isinstance(train_dataset, IterableDataset) and training_args.max_steps <= 0:
        raise ValueError("a streamed dataset has no length: pass --max_steps")

    # Model and processor; the chat template carries the system prompt the model is trained with
    model, processor = load_model(model_args, parts={})
    if script_args.system_prompt is not None:
        processor.chat_template = build_chat_template(script_args.system_prompt)
    feature_cache = (AudioFeatureCache(script_args.feature_cache_dir, model, processor)
                     if script_args.feature_cache_dir else None)

    # Training
    trainer = TinyGiantGRPOTrainer(
        model=model,
        reward_funcs=reward_functions(script_args, training_args.output_dir),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=lora_config(model_args) if model_args.use_peft else None,
        callbacks=[MetricsLogger(), ProgressLines(), *(callbacks or [])],
        projector_learning_rate=script_args.projector_learning_rate,
        feature_cache=feature_cache,
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**result.metrics, "skipped_rows": skipped.total(), "encoded_clips": trainer.encoded_clips}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)

    # Save (LoRA merged into the LLM) and push
    summary = {"method": "GRPO (TRL)", "metrics": metrics, "args": vars(script_args), "peft": model_args.use_peft,
               "global_step": trainer.state.global_step, "start": model_args.model_name_or_path}
    folder = save_final(trainer, processor, training_args.output_dir, summary, model_args.use_peft,
                        save_adapter=script_args.save_adapter)
    if push and trainer.is_world_process_zero():
        from tinygiant.hub.publish import push_to_hub

        push_to_hub(folder, training_args.hub_model_id, token=training_args.hub_token,
                    private=training_args.hub_private_repo)
    logger.info("done: %s (skipped rows: %d)", training_args.output_dir, skipped.total())
    return trainer, metrics


if __name__ == "__main__":
    main(*parse_args())
