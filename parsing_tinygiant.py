"""TinyGiant's prompt and answer format: how a question becomes chat messages, how a CoTA row becomes a training
conversation, and how an output is read back into its reasoning, its answer and the option it picks.

Shared by the pipeline, training data and evaluation, and by the clients of a serving engine (the MMAR endpoint, the
web app's server backend), so that the model is always asked, taught and scored the same way. Standard library
only: this file ships with the remote code.
"""

import base64
import re
import string
from pathlib import Path
from typing import Any

LETTERS = string.ascii_lowercase

# Audio-Reasoner's system prompt (CoTA), with the think block written `<think>` as Qwen3 tokenizes it (one token);
# the four sections and <RESPONSE> keep CoTA's upper-case tags. `parse_response` reads either case.
SYSTEM_PROMPT = (
    "You are an audio deep-thinking model. Upon receiving a question, please respond in two parts: <think> and "
    "<RESPONSE>. The <think> section should be further divided into four parts: <PLANNING>, <CAPTION>, "
    "<REASONING>, and <SUMMARY>."
)


def format_question(question: str, choices: list[str] | None = None) -> str:
    """Return the user text for `question`, listing `choices` (see `check_choices`) one per line as `(a) ...`,
    `(b) ...`. Raises `ValueError` for a question that is not a non-empty string."""
    if not isinstance(question, str):
        raise ValueError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("the question is empty")
    question = question.strip()
    if choices is None:
        return question
    lines = [f"({LETTERS[i]}) {c}" for i, c in enumerate(check_choices(choices))]
    return question + "\n" + "\n".join(lines)


def check_choices(choices: list[str] | tuple[str, ...]) -> list[str]:
    """Return `choices` stripped, as a list; raise `ValueError` for choices that are not a list or tuple of strings (a
    bare string would otherwise be read as its characters), fewer than 2 or more than 6 choices, an empty choice, or
    duplicate choices (compared case-insensitively, ignoring surrounding spaces)."""
    if not isinstance(choices, (list, tuple)):
        raise ValueError(f"choices must be a list or tuple of 2 to 6 strings, got {type(choices).__name__} "
                         f"{choices!r}")
    not_strings = [c for c in choices if not isinstance(c, str)]
    if not_strings:
        raise ValueError(f"every choice must be a string, got {not_strings!r}")
    choices = [c.strip() for c in choices]
    if not 2 <= len(choices) <= 6:
        raise ValueError(f"a multiple-choice question needs 2 to 6 choices, got {len(choices)}")
    if any(not c for c in choices):
        raise ValueError("a choice is empty")
    lowered = [c.lower() for c in choices]
    duplicates = sorted({c for c in choices if lowered.count(c.lower()) > 1})
    if duplicates:
        raise ValueError(f"duplicate choices: {duplicates}")
    return choices


def conversation(user_text: str, answer: str | None = None, reasoning: str | None = None,
                 system_prompt: str | None = None, audio: Any = None) -> list[dict]:
    """The chat messages for one audio and `user_text` (the audio first, as in CoTA), optionally with the assistant's
    turn (`answer`, and `reasoning` for its think block). `system_prompt` (a non-empty string) is written as the
    system message; without one, the chat template gives the checkpoint's default system turn, unless the caller
    renders with `default_system_prompt=""` (`NO_DEFAULT_SYSTEM_PROMPT` over a chat API). `audio` (a path, URL,
    bytes or `{"array", "sampling_rate"}`) goes in the audio item, for `apply_chat_template(tokenize=True)`
    and the pipeline; without it the item only marks where the audio goes."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    audio_item = {"type": "audio"} if audio is None else {"type": "audio", "audio": audio}
    messages.append({"role": "user", "content": [audio_item, {"type": "text", "text": user_text}]})
    if answer is not None or reasoning is not None:
        messages.append({"role": "assistant", "content": answer or "", "reasoning_content": reasoning or None})
    return messages


def question_messages(question: str, choices: list[str] | None = None, system_prompt: str | None = None) -> list[dict]:
    """The prompt for a question about one audio (`format_question` checks it), ready for a generation prompt."""
    return conversation(format_question(question, choices), system_prompt=system_prompt)


# ---------------------------------------------------------------------------------------------------
# The same conversation over an OpenAI-compatible chat API (TinyGiant on vLLM, or a peer's server)
# ---------------------------------------------------------------------------------------------------

# A TinyGiant checkpoint's chat template gives a conversation without a system turn the system prompt it was trained
# with (`processing_tinygiant.build_chat_template`); a request that wants no system turn at all sends these fields.
NO_DEFAULT_SYSTEM_PROMPT = {"chat_template_kwargs": {"default_system_prompt": ""}}
# `input_audio` names the container; the OpenAI API knows wav and mp3, vLLM reads whatever its decoders read.
AUDIO_FORMATS = {".wav": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg", ".m4a": "m4a"}


def openai_messages(messages: list[dict]) -> list[dict]:
    """`messages` (the form above, each audio item holding a file path or the file's bytes) as the chat API takes
    them: each audio an `input_audio` part (base64), an assistant turn's `reasoning_content` as `reasoning` (which vLLM
    hands back to the chat template, so a follow-up is rendered as the pipeline renders it)."""
    out = []
    for message in messages:
        message = dict(message)
        if isinstance(message.get("content"), list):
            message["content"] = [_input_audio(item["audio"]) if item.get("type") == "audio" else item
                                  for item in message["content"]]
        if "reasoning_content" in message:
            reasoning = message.pop("reasoning_content")
            if reasoning is not None:
                message["reasoning"] = reasoning
        out.append(message)
    return out


def _input_audio(audio):
    if isinstance(audio, (bytes, bytearray)):
        data, container = bytes(audio), "wav"
    elif isinstance(audio, (str, Path)):
        if not Path(audio).is_file():
            missing = not Path(audio).exists()
            raise ValueError(f"audio file {audio} does not exist" if missing else f"{audio} is not a file")
        data, container = Path(audio).read_bytes(), AUDIO_FORMATS.get(Path(audio).suffix.lower(), "wav")
    else:
        raise ValueError(f"an audio sent to a chat API must be a file path or the file's bytes, got {audio!r:.80}")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": container}}


def reasoning_of(message: Any) -> str | None:
    """The reasoning a chat API message or stream delta carries, if any: `reasoning` (vLLM 0.32) or
    `reasoning_content` (older vLLM, and most other servers)."""
    return getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)


def chat_reply_text(content: str | None = None, reasoning: str | None = None) -> str:
    """The model's output text from a chat API reply, as the pipeline would decode it: a server with a reasoning
    parser sends the think block as `reasoning` and the rest as `content` (either may still be arriving, or be None);
    a server without one sends it all as `content`. A think block whose answer has not begun stays open."""
    if reasoning is None:
        return content or ""
    if content is None:
        return f"<think>\n{reasoning}"
    return f"<think>\n{reasoning}\n</think>\n\n{content}"


def cota_to_messages(user: str, assistant: str, system_prompt: str | None = None) -> list[dict]:
    """One CoTA row (`user` with an `<audio>` marker, `assistant` with CoTA markup) as a training conversation.

    The assistant text is split as the model's output is read back (`parse_response`): `<THINK>...</THINK>` becomes
    `reasoning_content` (its PLANNING/CAPTION/REASONING/SUMMARY sections kept verbatim), `<RESPONSE>...</RESPONSE>`
    (or what follows the think block) the content. The `<audio>` marker becomes the audio item before the text.
    """
    parsed = parse_response(assistant or "")
    question = re.sub(r"\s*<audio>\s*", " ", user or "").strip()
    return conversation(question, answer=parsed["answer"] or "", reasoning=parsed["thinking"] or None,
                        system_prompt=system_prompt)


# ---------------------------------------------------------------------------------------------------
# Reading the model's output back
# ---------------------------------------------------------------------------------------------------

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_RESPONSE_OPEN = re.compile(r"<response>", re.IGNORECASE)
_RESPONSE_CLOSE = re.compile(r"</response>", re.IGNORECASE)
# CoTA section tags and chat special tokens such as <|im_end|> that may survive decoding.
_LEFTOVER_TAGS = re.compile(
    r"</?\s*(?:think|planning|caption|reasoning|summary|response)\s*>|<\|[^|>]*\|>", re.IGNORECASE
)

# "The answer is C.", "Answer: (c)", "the correct option is B", "answer is option D because".
# A letter without brackets only counts when punctuation or the end follows it, so that
# "The answer is A man speaking" or "the answer is C minor" are not read as letters.
_LETTER_AFTER_KEYWORD = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:=\-]?\s*"
    r"(?:(?:option|choice)\s+)?"
    r"(?:\(([a-z])\)|\b([a-z])\b(?=\s*$|[.,;:!?)\]]))",
    re.IGNORECASE,
)
# "option C because ..." / "choice (b) fits": the keyword itself marks the letter.
_LETTER_AFTER_OPTION = re.compile(r"\b(?:option|choice)\s+\(?([a-z])\)?(?!\w)", re.IGNORECASE)
# The whole answer is a letter ("C", "(c)", "C.") or starts with one as a label ("C. Parrot", "(B) Owl").
_LETTER_ALONE = re.compile(r"^\s*\(?([a-z])\)?\s*[.)]?\s*$", re.IGNORECASE)
_LETTER_LABEL = re.compile(r"^\s*(?:\(([a-z])\)|([a-z])[.):])\s*\S", re.IGNORECASE)
# "(c)" anywhere, not glued to a word as in "speaker(s)".
_LETTER_IN_BRACKETS = re.compile(r"(?<!\w)\(([a-z])\)", re.IGNORECASE)
# What may stand between "answer is" / "is" and the option text it names.
_FILLER = r"\s*:?\s*(?:(?:the|a|an)\s+)?[\"'“‘(]*$"
_AFTER_ANSWER_IS = re.compile(r"\banswer(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?" + _FILLER, re.I)
_AFTER_IS = re.compile(r"\b(?:is|are|was|be)" + _FILLER, re.IGNORECASE)


def _strip_tags(text):
    return _LEFTOVER_TAGS.sub("", text).strip()


def _split_response(rest):
    """The content of <RESPONSE>...</RESPONSE> (closed or not) if present, else `rest`."""
    opened = _RESPONSE_OPEN.search(rest)
    if opened:
        rest = rest[opened.end():]
        closed = _RESPONSE_CLOSE.search(rest)
        if closed:
            rest = rest[:closed.start()]
    return _strip_tags(rest) or None


def parse_response(text: str, choices: list[str] | None = None) -> dict:
    """Split a generated output into its reasoning and its final answer.

    Returns `{"text": text, "thinking": str | None, "answer": str | None}`, plus `"choice"` when
    `choices` is given.

    * `thinking` is the content of the first `<think>...</think>` block (tag case ignored, so CoTA's
      `<THINK>` works too), stripped, with the CoTA sections inside it kept as they are. An empty
      block, as Qwen3 writes with thinking switched off (`<think>\\n\\n</think>\\n\\nanswer`), gives
      `""`, so `""` means "a block, but empty" and `None` means "no block at all". A closing
      `</think>` without an opening tag (the chat template already opened the block) takes
      everything before it as the thinking. An opening tag that is never closed (generation hit
      `max_new_tokens`) takes everything after it as the thinking and gives `answer = None`.
    * `answer` is what follows the think block, or the whole output when there is none. If it holds
      `<RESPONSE>` (closed or not), only that content is used. Leftover CoTA tags and chat special
      tokens are removed; an empty result is `None`.
    * `choice` is the option text the answer selects, or `None`. Nothing is guessed:

      1. An explicit letter wins. Letters are a-f in the order of `choices`, as `format_question`
         prints them, in either case and with or without brackets: "The answer is C.",
         "Answer: (c)", "the correct option is B", "C", "(b)", "C. Parrot", "(B) Owl", or a lone
         bracketed letter such as "so (c) fits best". The last letter stated after
         "answer/option/choice" counts; otherwise a leading label and bracketed letters count only
         if they all agree. After "is", a bare letter needs punctuation or the end after it, so
         "the answer is A man speaking" is not letter a.
         A letter with no such option ("E" with four choices) gives `None`. When options are
         themselves letters (note names "B", "C", ...), "C" could be a label or a text: it counts
         only if both readings give the same option or just one of them exists.
      2. Otherwise the options whose text appears in the answer (whole words, any case). One found:
         that one. Several: the last one named right after "answer is" / "answer:"; else the last
         one named right after "is"; else, if all but one appear only inside the longer option
         ("electric piano" contains "piano"), that longer option. Anything else is ambiguous: `None`.
      3. Otherwise `None`.
    """
    text = "" if text is None else str(text)
    thinking, answer = None, None
    opened = _THINK_OPEN.search(text)
    closed = _THINK_CLOSE.search(text, opened.end() if opened else 0)
    if opened and not closed:
        thinking = text[opened.end():].strip()
    elif closed:
        thinking = text[opened.end() if opened else 0:closed.start()].strip()
        answer = _split_response(text[closed.end():])
    else:
        answer = _split_response(text)
    result = {"text": text, "thinking": thinking, "answer": answer}
    if choices is not None:
        result["choice"] = _select_choice(answer, [str(c).strip() for c in choices])
    return result


def parse_output(text: str, choices: list[str] | None = None, finished: bool = True) -> dict:
    """`parse_response`, with the rule for an output cut at the length limit (`finished=False`: no end-of-sequence
    token, or a chat API's `finish_reason == "length"`): its answer is missing, so it has none and picks no choice."""
    output = parse_response(text, choices)
    if not finished:
        output["answer"] = None
        if "choice" in output:
            output["choice"] = None
    return output


def _letter(answer):
    """The lower-case letter the answer states, or None if it states none or contradicts itself."""
    # Both patterns can catch the same statement; the one that ends last is the conclusion.
    stated = [(m.end(), m.group(1) or m.group(2)) for m in _LETTER_AFTER_KEYWORD.finditer(answer)]
    stated += [(m.end(), m.group(1)) for m in _LETTER_AFTER_OPTION.finditer(answer)]
    if stated:
        return max(stated)[1].lower()
    # A leading label and any bracketed letters must all agree: "(a) is wrong, (c) fits" states none.
    letters = {x.lower() for x in _LETTER_IN_BRACKETS.findall(answer)}
    label = _LETTER_ALONE.match(answer) or _LETTER_LABEL.match(answer)
    if label:
        letters.add(next(g for g in label.groups() if g).lower())
    return letters.pop() if len(letters) == 1 else None


def _select_choice(answer, choices):
    if not answer or not choices:
        return None
    answer = answer.replace("*", "")  # markdown bold around a letter or an option
    letter = _letter(answer)
    if letter is not None:
        index = LETTERS.index(letter)
        # "C" may also be the text of an option (note names): keep it only if one reading is possible.
        readings = {c for c in choices if c.lower() == letter}
        if index < min(len(choices), 6):
            readings.add(choices[index])
        return readings.pop() if len(readings) == 1 else None
    return _choice_by_text(answer, choices)


def _choice_by_text(answer, choices):
    spans = {}  # option -> [(start, end), ...] of its whole-word occurrences
    for choice in choices:
        words = choice.split()
        if not words:  # an empty option would "match" everywhere
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        found = [m.span() for m in re.finditer(pattern, answer, re.IGNORECASE)]
        if found:
            spans[choice] = found
    if len(spans) <= 1:
        return next(iter(spans), None)
    for prefix in (_AFTER_ANSWER_IS, _AFTER_IS):
        named = [(start, c) for c, found in spans.items() for start, _ in found if prefix.search(answer[:start])]
        if named:
            return max(named)[1]
    # Drop options seen only inside another option's occurrence ("piano" in "electric piano").
    def inside_other(choice: str) -> bool:
        return all(
            any(o != choice and s2 <= s <= e <= e2 for o, found in spans.items() for s2, e2 in found)
            for s, e in spans[choice]
        )

    left = [c for c in spans if not inside_other(c)]
    return left[0] if len(left) == 1 else None
