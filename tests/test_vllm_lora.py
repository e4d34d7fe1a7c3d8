"""Several fine-tunes of one base on one vLLM server: `--enable-lora --lora-modules name=ADAPTER ...`.

Two LoRA adapters are made here with PEFT on the question-dependent tiny checkpoint (see `test_vllm.py`), one on the
attention projections and one on the MLP, so that both of vLLM's packed layers (`qkv_proj`, `gate_up_proj`) take an
adapter's separate projections. Their weights are drawn at random (`init_lora_weights=False`: PEFT's default zero
`lora_B` would make an adapter that changes nothing), scaled by `lora_alpha / r = 8` so that each changes the greedy
answer, and saved unmerged, as PEFT saves them. Each adapter's greedy
answer on the server must equal transformers' with that adapter merged into the model (`merge_and_unload`), the base
model's the base's, and the three answers differ, so an adapter the server ignored, or applied to the wrong request,
fails. Everything runs in float32.
"""

import openai
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_vllm import (
    LOGPROB_TOLERANCE,
    MAX_TOKENS,
    QUESTIONS,
    TEST_FLAGS,
    as_transformers,
    free_port,
    question_dependent,
    sweep,
    user_message,
    wav_bytes,
)

from modeling_tinygiant import TinyGiantForConditionalGeneration
from processing_tinygiant import TinyGiantProcessor
from tinygiant.hub.publish import save_checkpoint
from tinygiant.hub.tiny_checkpoint import write_tiny_checkpoint
from tinygiant.serving.vllm_server import VllmServer

LORA_SCALE = 8  # lora_alpha / r: at 2, the attention adapter leaves this model's greedy answer as it was
# name: (the language model's projections it adapts, rank, seed)
ADAPTERS = {
    "attention": (["q_proj", "k_proj", "v_proj", "o_proj"], 8, 3),
    "mlp": (["gate_proj", "up_proj", "down_proj"], 16, 4),
}


def lora_targets(projections):
    """The language model's `projections` only, as train_sft.py's `LORA_TARGETS` (the encoders have `q_proj`s too)."""
    return rf".*language_model.*\.({'|'.join(projections)})"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    model, processor = write_tiny_checkpoint(root / "parts")
    return save_checkpoint(question_dependent(model).eval(), processor, root / "base")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """`{name: folder}`: each adapter saved unmerged (adapter_config.json, adapter_model.safetensors)."""
    root = tmp_path_factory.mktemp("adapters")
    folders = {}
    for name, (projections, rank, seed) in ADAPTERS.items():
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=LORA_SCALE * rank, target_modules=lora_targets(projections),
                            init_lora_weights=False)
        peft_model = get_peft_model(TinyGiantForConditionalGeneration.from_pretrained(base), config)
        peft_model.save_pretrained(root / name)
        folders[name] = root / name
    return folders


@torch.no_grad()
def transformers_answer(base, adapter, messages):
    """Greedy tokens and first-token log-probabilities of the base, or of the base with `adapter` merged into it."""
    model = TinyGiantForConditionalGeneration.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    inputs = TinyGiantProcessor.from_pretrained(base, trust_remote_code=True).apply_chat_template(
        as_transformers(messages), tokenize=True, add_generation_prompt=True, return_dict=True)
    tokens = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    logprobs = model(**inputs).logits[0, -1].log_softmax(-1)
    return tokens[0, inputs["input_ids"].shape[1]:].tolist(), logprobs


def server_answer(client, model, messages):
    response = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=5,
        extra_body={"return_tokens_as_token_ids": True})
    content = response.choices[0].logprobs.content
    return [token_id(t) for t in content], {token_id(t): t.logprob for t in content[0].top_logprobs}


def token_id(entry) -> int:
    """The id in a token that `return_tokens_as_token_ids` wrote as `token_id:N`."""
    return int(entry.token.split(":")[1])


def test_two_adapters_and_the_base_on_one_server(base, adapters, tmp_path):
    messages = [user_message(QUESTIONS[0], wav_bytes(sweep(2)))]
    lora_flags = ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "16",
                  "--lora-modules", *(f"{name}={folder}" for name, folder in adapters.items())]
    with VllmServer(base, port=free_port(), extra_args=[*TEST_FLAGS, *lora_flags],
                    log_path=tmp_path / "vllm.log") as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)
        served = {model.id for model in client.models.list().data}
        assert served == {str(base), *adapters}, served
        answers = {}
        for name in [None, *adapters]:  # the base first, then each adapter
            ids, top5 = server_answer(client, name or str(base), messages)
            expected, logprobs = transformers_answer(base, adapters.get(name), messages)
            assert ids == expected, name
            for token, logprob in top5.items():
                assert abs(logprob - logprobs[token].item()) < LOGPROB_TOLERANCE, (name, token)
            answers[name] = ids
        # The base again, after the adapters: no adapter is left applied to requests that name none.
        assert server_answer(client, str(base), messages)[0] == answers[None]
    assert len({tuple(ids) for ids in answers.values()}) == len(answers), answers
