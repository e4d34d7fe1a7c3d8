"""What the ecosystem's own suites expect of a model, checked black-box on a tiny checkpoint loaded as remote code.

Each test stands for a bug that transformers' `ModelTesterMixin`, PEFT's and TRL's tests or vLLM's processing test
found: a cache passed as `past_key_values`, `return_dict=False`, `output_loading_info=True`, the tensor-parallel plan,
an empty text, PEFT's prefix and prompt tuning; and the checkpoint's own system prompt in its chat template.
"""

import os
import subprocess
import sys

import pytest
import torch
from helpers import tone
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModel, AutoProcessor

from processing_tinygiant import build_chat_template
from tinygiant.hub.publish import save_checkpoint

QUESTION = "What is the sound?"


# A fresh Python loads the tokenizer alone and says whether any of the checkpoint's code was imported.
LOAD_TOKENIZER = """
import sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **eval(sys.argv[2]))
print("\\nIDS", tokenizer("What is the sound?")["input_ids"])
print("CUSTOM_CODE", any(name.startswith("transformers_modules") for name in sys.modules))
"""
PROMPT = "Do you wish to run the custom code?"


@pytest.fixture(scope="module")
def remote_processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir, trust_remote_code=True)


def load_remote(tiny_dir, **kwargs):
    model = AutoModel.from_pretrained(tiny_dir, trust_remote_code=True, **kwargs)
    loaded = model[0] if kwargs.get("output_loading_info") else model
    assert type(loaded).__module__.startswith("transformers_modules."), "not the checkpoint's own code"
    return model


@pytest.fixture(scope="module")
def remote_model(tiny_dir):
    return load_remote(tiny_dir).eval()


def training_example(processor):
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": {"array": tone(1.0), "sampling_rate": 16000}},
                                     {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "A single tone."},
    ]
    return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, output_labels=True,
                                         padding_side="right")


def generation_prompt(processor):
    audio = {"array": tone(1.0), "sampling_rate": 16000}
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                 {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(conversation, tokenize=True, return_dict=True, add_generation_prompt=True)


@torch.no_grad()
def test_past_key_values_continues_the_context(remote_model, remote_processor):
    inputs = generation_prompt(remote_processor)
    full = remote_model(**inputs).logits
    # The last 3 prompt tokens are "<|im_start|>assistant\n": outside the instruction, so the prefix's intent is the
    # same.
    k = 3
    prefix = {key: value[:, :-k] if key in ("input_ids", "attention_mask", "instruction_mask") else value
              for key, value in inputs.items()}
    cache = remote_model(**prefix, use_cache=True).cache
    rest = remote_model(input_ids=inputs["input_ids"][:, -k:], attention_mask=inputs["attention_mask"],
                        past_key_values=cache).logits
    torch.testing.assert_close(rest, full[:, -k:], rtol=1e-4, atol=1e-4)
    no_context = remote_model(input_ids=inputs["input_ids"][:, -k:]).logits
    assert not torch.allclose(no_context, full[:, -k:], atol=1e-3)  # so the cache was really read


@torch.no_grad()
def test_return_dict_false_gives_a_tuple(remote_model, remote_processor):
    inputs = training_example(remote_processor)
    as_dict = remote_model(**inputs)
    as_tuple = remote_model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    inner = remote_model.model(**{k: v for k, v in inputs.items() if k != "labels"}, return_dict=False)
    assert isinstance(inner, tuple) and inner[0].shape[:2] == inputs["input_ids"].shape


def test_output_loading_info_gives_the_info_dict(tiny_dir):
    model, info = load_remote(tiny_dir, output_loading_info=True)
    assert {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"} <= set(info)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any(p.requires_grad for encoder in model.model.audio_encoders() for p in encoder.parameters())


def test_tensor_parallel_plan_shards_the_head_with_its_tied_embedding(remote_model):
    plan = remote_model.tp_plan
    assert plan["model.language_model.embed_tokens"] == "embedding_rowwise"
    assert plan["lm_head"] == "colwise_gather_output"  # as Qwen3ForCausalLM's


def test_processor_takes_an_empty_text(remote_processor):
    out = remote_processor(text="")
    assert out["input_ids"].shape == out["instruction_mask"].shape == (1, 0)
    batch = remote_processor(text=["", "Hello"])
    assert batch["instruction_mask"][0].sum() == 0 and batch["instruction_mask"][1].sum() > 0


def test_peft_prefix_tuning_changes_the_loss_and_trains(tiny_dir, remote_processor):
    inputs = training_example(remote_processor)
    model = load_remote(tiny_dir)
    base = model(**inputs).loss.item()
    tuned = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    loss = tuned(**inputs).loss
    assert abs(loss.item() - base) > 1e-4  # the prefix is attended to
    loss.backward()
    prefix = [p for p in tuned.parameters() if p.requires_grad]
    assert prefix and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix)


@pytest.mark.parametrize("kind", ["prompt_tuning", "p_tuning"])
def test_peft_virtual_tokens_keep_the_intent_on_the_instruction(tiny_dir, remote_processor, kind):
    from peft import PromptEncoderConfig

    inputs = training_example(remote_processor)
    model = load_remote(tiny_dir).eval()
    intents = []
    model.model.projector.register_forward_hook(lambda module, args, kwargs, out: intents.append(args[2]),
                                                with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
        config = (PromptTuningConfig if kind == "prompt_tuning" else PromptEncoderConfig)(
            task_type="CAUSAL_LM", num_virtual_tokens=4, **({"encoder_hidden_size": 16} if kind == "p_tuning" else {}))
        get_peft_model(model, config).eval()(**inputs)
    # The virtual tokens come first; q_intent (eq. 11) must still average exactly "What is the sound?".
    torch.testing.assert_close(intents[1], intents[0])


def test_a_checkpoint_renders_the_system_prompt_it_was_trained_with(tiny_dir, tmp_path, remote_model):
    processor = AutoProcessor.from_pretrained(tiny_dir, trust_remote_code=True)
    conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": QUESTION}]}]
    odd = 'Say "yes" or {{ no }} {% raw %}\\ à\nthen stop.'  # quotes, Jinja markup, a backslash, non-ASCII, a newline
    cases = [("Answer briefly.", "<|im_start|>system\nAnswer briefly.<|im_end|>\n"),
             (odd, f"<|im_start|>system\n{odd}<|im_end|>\n"), ("", "")]
    for trained_with, expected in cases:
        processor.chat_template = build_chat_template(trained_with)
        folder = save_checkpoint(remote_model, processor, tmp_path / f"trained-{len(trained_with)}")
        reloaded = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        text = reloaded.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert text == f"{expected}<|im_start|>user\n<audio>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        # A system message of the conversation's own, or the call's override, still wins.
        own = reloaded.apply_chat_template([{"role": "system", "content": "Mine."}, *conversation], tokenize=False)
        assert own.startswith("<|im_start|>system\nMine.<|im_end|>") and own.count("<|im_start|>system") == 1
        none = reloaded.apply_chat_template(conversation, tokenize=False, default_system_prompt="")
        assert none.startswith("<|im_start|>user")
    with pytest.raises(ValueError, match="string"):
        build_chat_template(None)


def test_activation_checkpointing_recomputes_the_language_model_and_keeps_the_gradients(tiny_dir, remote_processor):
    inputs = training_example(remote_processor)
    model = load_remote(tiny_dir).train()
    for module in model.modules():  # the same forward twice: no dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    def gradients():
        model.zero_grad()
        model(**inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    layer = model.model.language_model.layers[0]
    calls = []
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # inside the checkpointed forward
    checkpointed = gradients()
    assert len(calls) == 2  # the forward, then its recomputation in the backward pass
    assert plain.keys() == checkpointed.keys() and any("projector" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["lora", "prefix_tuning", "prompt_tuning"])
def test_trl_sft_trainer_trains_each_peft_method(tiny_dir, remote_processor, tmp_path, method):
    """TRL's own SFTTrainer with a PEFT config, as TRL's PEFT tests run it: the adapter trains, the base stays."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    peft_config = {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        "prefix_tuning": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prompt_tuning": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }[method]
    model = load_remote(tiny_dir)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                       save_strategy="no", report_to=[], use_cpu=True, bf16=False, activation_checkpointing=False,
                       max_length=None, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}),
        train_dataset=Dataset.from_list([{"row": i} for i in range(4)]),
        data_collator=lambda rows: remote_processor.pad([training_example(remote_processor) for _ in rows],
                                                        padding_side="right"),
        processing_class=remote_processor,
        peft_config=peft_config,
    )
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "language_model.layers.0.mlp" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert adapter and any(not torch.equal(after[n], value) for n, value in adapter.items())
    assert all(torch.equal(after[n], value) for n, value in base.items())


def load_tokenizer_alone(tiny_dir, kwargs: str, stdin) -> tuple[str, list[int], bool]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # stdin held open (PIPE, never written): a prompt would block on it until transformers' 15 s alarm.
    result = subprocess.run([sys.executable, "-c", LOAD_TOKENIZER, str(tiny_dir), kwargs], stdin=stdin,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("IDS", "CUSTOM_CODE")))
    return result.stdout + result.stderr, eval(lines["IDS"]), lines["CUSTOM_CODE"] == "True"


def test_the_tokenizer_loads_alone_without_the_checkpoints_code(tiny_dir, remote_processor):
    expected = remote_processor.tokenizer(QUESTION)["input_ids"]
    output, ids, custom_code = load_tokenizer_alone(tiny_dir, "{'trust_remote_code': False}", subprocess.PIPE)
    assert PROMPT not in output and not custom_code
    assert ids == expected
    # Without the argument transformers asks first (it resolves the model config before the tokenizer's files; see
    # docs/inference.md); a script with no terminal reads end-of-input as "no" and still gets the same tokenizer.
    output, ids, custom_code = load_tokenizer_alone(tiny_dir, "{}", subprocess.DEVNULL)
    assert ids == expected and not custom_code
