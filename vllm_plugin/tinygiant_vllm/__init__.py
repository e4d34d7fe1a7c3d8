"""TinyGiant on vLLM, as an out-of-tree plugin.

Installed next to vLLM, its `vllm.general_plugins` entry point registers two things in every vLLM process:
- the model `TinyGiantForConditionalGeneration` (`tinygiant_vllm.model`), found by the checkpoint's `architectures`;
- the reasoning parser `tinygiant` (`tinygiant_vllm.reasoning`).

    vllm serve <TinyGiant folder or repo> --trust-remote-code --reasoning-parser tinygiant

The equations are not copied here: the model runs the checkpoint's own `modeling_tinygiant.py` for its audio half.
"""

ARCHITECTURE = "TinyGiantForConditionalGeneration"
REASONING_PARSER = "tinygiant"


def register():
    """The entry point. vLLM calls it in the API server, the engine core and every worker: safe to call twice."""
    from vllm import ModelRegistry
    from vllm.reasoning import ReasoningParserManager

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "tinygiant_vllm.model:TinyGiantForConditionalGeneration")
    if REASONING_PARSER not in ReasoningParserManager.list_registered():
        ReasoningParserManager.register_lazy_module(
            REASONING_PARSER, "tinygiant_vllm.reasoning", "TinyGiantReasoningParser"
        )
