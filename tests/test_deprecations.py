"""No deprecated transformers / TRL API in what the project calls: each entry point runs with FutureWarning and
DeprecationWarning turned into errors, whichever module raises them (a deprecated argument the project passes is
reported from inside transformers, which the pytest filter scoped to the project's modules cannot see)."""

import warnings

import torch
from helpers import chat, tone

import train_sft
from pipeline_tinygiant import TinyGiantAudioReasoningPipeline
from tinygiant.demo.synthetic import make_synthetic_dataset


def strict():
    context = warnings.catch_warnings()
    context.__enter__()
    for category in (FutureWarning, DeprecationWarning):
        warnings.simplefilter("error", category)
    return context


def test_forward_generate_and_the_pipeline(model, processor):
    prompt = processor.apply_chat_template(chat("How many beeps?"), add_generation_prompt=True, tokenize=False)
    context = strict()
    try:
        inputs = processor(text=prompt, audio=tone(1.0), sampling_rate=16000)
        with torch.no_grad():
            model(**inputs, labels=inputs["input_ids"])
        greedy = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(**inputs, **greedy), model.generate_with_static_cache(**inputs, **greedy))
        pipe = TinyGiantAudioReasoningPipeline(model=model, processor=processor)
        pipe([tone(1.0), tone(2.0)], sampling_rate=16000, question="q", batch_size=2, max_new_tokens=3)
    finally:
        context.__exit__(None, None, None)


def test_a_training_run_through_train_sft(tiny_dir, tmp_path):
    make_synthetic_dataset(tmp_path / "data", n_train=4, n_heldout=0, tasks=["higher_tone"])
    args = train_sft.parse_args([
        "--model_name_or_path", str(tiny_dir), "--dataset_files", str(tmp_path / "data" / "train.jsonl"),
        "--output_dir", str(tmp_path / "run"), "--use_cpu", "--bf16", "false", "--report_to", "none",
        "--per_device_train_batch_size", "2", "--effective_batch_size", "2", "--max_steps", "1",
        "--save_strategy", "no", "--disable_tqdm", "true",
    ])
    context = strict()
    try:
        _, metrics = train_sft.main(*args)
    finally:
        context.__exit__(None, None, None)
    assert metrics["skipped_rows"] == 0
