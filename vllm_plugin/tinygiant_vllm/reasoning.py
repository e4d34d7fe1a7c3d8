"""The `tinygiant` reasoning parser: the think block goes to the response's `reasoning` field, the answer to `content`.

    vllm serve DIR --trust-remote-code --reasoning-parser tinygiant

Both are read by the checkpoint's own `parsing_tinygiant.parse_response`, the one reader of TinyGiant's output, so
every form it reads works here: `<think>` or CoTA's upper-case `<THINK>`, `<RESPONSE>...</RESPONSE>` (the tags are
dropped from `content`), a think block never closed (all of it is reasoning, no content), or no block at all (all of
it is content).

Streaming sends, at each step, what `parse_response` gives for the text so far beyond what was already sent; a tag
still being written (`<RESP`) is held back until it is complete. For the forms above the streamed pieces add up to
the non-streamed fields. `is_reasoning_end` and `extract_content_ids` (for structured output) go by the `</think>`
token, as Qwen3's parser does.
"""

import re

from transformers.dynamic_module_utils import get_class_from_dynamic_module
from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.reasoning.basic_parsers import BaseThinkingReasoningParser

# A tag that may still be growing at the end of the text: `<`, `</`, `<RESP`, `<|im_`...
PARTIAL_TAG = re.compile(r"<[/|]?[A-Za-z_|]*$")


class TinyGiantReasoningParser(BaseThinkingReasoningParser):
    start_token = "<think>"
    end_token = "</think>"

    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(tokenizer, *args, **kwargs)
        model_config = self._model_config
        source = model_config.model if model_config is not None else tokenizer.name_or_path
        revision = model_config.revision if model_config is not None else None
        self.parse_response = get_class_from_dynamic_module("parsing_tinygiant.parse_response", source,
                                                            revision=revision)

    def split(self, text):
        """(reasoning, content) of a whole output, as `parse_response` reads it."""
        parsed = self.parse_response(text)
        return parsed["thinking"], parsed["answer"]

    def extract_reasoning(self, model_output, request):
        return self.split(model_output)

    def extract_reasoning_streaming(self, previous_text, current_text, delta_text, previous_token_ids,
                                    current_token_ids, delta_token_ids):
        before = [part or "" for part in self.split(PARTIAL_TAG.sub("", previous_text))]
        now = [part or "" for part in self.split(PARTIAL_TAG.sub("", current_text))]
        # Only text that extends what was sent can be sent; nothing already streamed is taken back.
        reasoning, content = (new[len(old):] if new.startswith(old) else "" for old, new in zip(before, now))
        if not reasoning and not content:
            return None
        return DeltaMessage(reasoning=reasoning or None, content=content or None)
