"""Tests for parsing_tinygiant: how a question is written into the prompt and how outputs are read back."""

import base64

import pytest

from parsing_tinygiant import (
    chat_reply_text,
    conversation,
    format_question,
    openai_messages,
    parse_output,
    parse_response,
)

BIRDS = ["Dog", "Cat", "Parrot", "Owl"]

COTA_OUTPUT = (
    "<THINK>\n<PLANNING>\nI will listen for the animal and compare it with each option.</PLANNING>\n"
    "<CAPTION>\nA bird repeats a human word in a squawky voice.</CAPTION>\n"
    "<REASONING>\n(a) no barking ... (b) no meowing ... (c) mimicry fits ... (d) no hooting ...</REASONING>\n"
    "<SUMMARY>\nThe mimicked speech points to (c).</SUMMARY>\n</THINK>\n"
    "<RESPONSE>\nThe animal imitates human speech, which parrots do. The answer is C.</RESPONSE>"
)


# --- format_question ---------------------------------------------------------------------------


def test_format_question_lists_lettered_choices():
    assert format_question(" What is it? ", ["Dog", "Cat"]) == "What is it?\n(a) Dog\n(b) Cat"
    assert format_question("Describe the clip.") == "Describe the clip."


@pytest.mark.parametrize(
    "question, choices, message",
    [
        ("", ["a", "b"], "empty"),
        ("   ", None, "empty"),
        ("Q?", ["only one"], "2 to 6"),
        ("Q?", [str(i) for i in range(7)], "2 to 6"),
        ("Q?", ["Dog", " "], "empty"),
        ("Q?", ["Dog", "dog "], "duplicate"),
    ],
)
def test_format_question_errors(question, choices, message):
    with pytest.raises(ValueError, match=message):
        format_question(question, choices)


# --- thinking / answer split ------------------------------------------------------------------------


def test_full_cota_output():
    out = parse_response(COTA_OUTPUT, BIRDS)
    assert out["text"] == COTA_OUTPUT
    assert out["thinking"].startswith("<PLANNING>\nI will listen")
    assert out["thinking"].endswith("points to (c).</SUMMARY>")
    assert out["answer"] == "The animal imitates human speech, which parrots do. The answer is C."
    assert out["choice"] == "Parrot"


def test_qwen3_lowercase_think_block():
    text = "<think>\nThe bird copies words, so it is a parrot.\n</think>\n\nThe answer is (c)."
    out = parse_response(text, BIRDS)
    assert out["thinking"] == "The bird copies words, so it is a parrot."
    assert out["answer"] == "The answer is (c)."
    assert out["choice"] == "Parrot"


def test_qwen3_empty_think_block_gives_empty_string():
    out = parse_response("<think>\n\n</think>\n\nParrot", BIRDS)
    assert out["thinking"] == ""
    assert out["answer"] == "Parrot"
    assert out["choice"] == "Parrot"


def test_closing_tag_only_when_template_opened_the_block():
    out = parse_response("It mimics speech.\n</think>\n\nD. Owl", BIRDS)
    assert out["thinking"] == "It mimics speech."
    assert out["choice"] == "Owl"


def test_truncated_output_has_thinking_but_no_answer():
    text = "<THINK>\n<PLANNING>\nFirst I will compare the options. The answer is C if"
    out = parse_response(text, BIRDS)
    assert out["thinking"] == "<PLANNING>\nFirst I will compare the options. The answer is C if"
    assert out["answer"] is None
    assert out["choice"] is None  # never read an answer out of unfinished reasoning


def test_no_think_block_whole_text_is_answer():
    out = parse_response("  <RESPONSE>The answer is B.  ", BIRDS)
    assert out["thinking"] is None
    assert out["answer"] == "The answer is B."
    assert out["choice"] == "Cat"


def test_unclosed_response_and_special_tokens():
    out = parse_response("<think>x</think><RESPONSE>\nIt is an owl.<|im_end|>", BIRDS)
    assert out["answer"] == "It is an owl."
    assert out["choice"] == "Owl"


def test_text_after_closed_response_is_ignored():
    out = parse_response("<think>x</think><RESPONSE>A.</RESPONSE> extra words about a cat", BIRDS)
    assert out["answer"] == "A."
    assert out["choice"] == "Dog"


@pytest.mark.parametrize("text", ["", "   ", None, "<think></think>", "<THINK>\n</THINK>\n<RESPONSE>\n</RESPONSE>"])
def test_empty_outputs(text):
    out = parse_response(text, BIRDS)
    assert out["answer"] is None
    assert out["choice"] is None


def test_without_choices_there_is_no_choice_key():
    out = parse_response("<think>a</think>b")
    assert out == {"text": "<think>a</think>b", "thinking": "a", "answer": "b"}


# --- choice: letters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The answer is C.", "Parrot"),
        ("the answer is c", "Parrot"),
        ("Answer: (c)", "Parrot"),
        ("Answer: C) Parrot", "Parrot"),
        ("(B)", "Cat"),
        ("b", "Cat"),
        ("C.", "Parrot"),
        ("C. Parrot", "Parrot"),
        ("(d) Owl", "Owl"),
        ("**D**", "Owl"),
        ("The correct option is A, because the sound is barking.", "Dog"),
        ("I pick option b since it meows.", "Cat"),
        ("The bird copies speech, so (c) fits best.", "Parrot"),
        ("At first the answer is A, but on reflection the answer is D.", "Owl"),
    ],
)
def test_letter_statements(answer, expected):
    assert parse_response(answer, BIRDS)["choice"] == expected


@pytest.mark.parametrize("answer", ["The answer is E.", "(f)", "E", "Answer: (e) Parrot"])
def test_out_of_range_letter_gives_none(answer):
    assert parse_response(answer, BIRDS)["choice"] is None


def test_disagreeing_bracketed_letters_are_not_a_letter():
    # (a) and (c) are both mentioned and no option text appears: nothing to pick.
    assert parse_response("(a) does not fit, while (c) might.", BIRDS)["choice"] is None


def test_article_a_is_not_letter_a():
    choices = ["A man speaking", "A woman singing", "A dog barking"]
    assert parse_response("The answer is A woman singing.", choices)["choice"] == "A woman singing"
    assert parse_response("The answer is a.", choices)["choice"] == "A man speaking"
    assert parse_response("The best choice is a dog barking.", choices)["choice"] == "A dog barking"


def test_note_names_as_options():
    notes = ["C", "D", "E", "F"]
    # "C" is the text of option (a) and the letter of option (c): ambiguous.
    assert parse_response("The answer is C.", notes)["choice"] is None
    # "F" can only be the option text (there is no option f).
    assert parse_response("The answer is F.", notes)["choice"] == "F"
    # "(d)" is the label of "F" but also the text of option "D": ambiguous.
    assert parse_response("(d)", notes)["choice"] is None
    assert parse_response("The key is C minor.", ["C major", "C minor", "A minor"])["choice"] == "C minor"


# --- choice: option text ------------------------------------------------------------------------


def test_answer_names_the_option_text():
    assert parse_response("It is clearly a parrot mimicking speech.", BIRDS)["choice"] == "Parrot"
    assert parse_response("PARROT", BIRDS)["choice"] == "Parrot"


def test_whole_word_matching_only():
    # "cat" inside "category" and "owl" inside "bowl" must not count.
    assert parse_response("This category of sound comes from a bowl.", BIRDS)["choice"] is None


def test_two_options_named_prefers_the_one_after_answer_is():
    text = "It could be a dog barking, but the answer is Parrot."
    assert parse_response(text, BIRDS)["choice"] == "Parrot"
    assert parse_response("Not a cat; it is a dog.", BIRDS)["choice"] == "Dog"


def test_two_options_named_without_a_conclusion_is_ambiguous():
    assert parse_response("I hear a dog and a cat.", BIRDS)["choice"] is None


def test_option_contained_in_a_longer_option():
    choices = ["Piano", "Electric piano", "Violin"]
    assert parse_response("An electric piano plays chords.", choices)["choice"] == "Electric piano"
    assert parse_response("A piano plays, then an electric piano.", choices)["choice"] is None


def test_two_option_question():
    choices = ["Male", "Female"]
    assert parse_response("<think>Low pitch.</think>The answer is A.", choices)["choice"] == "Male"
    assert parse_response("<think>High pitch.</think>Female", choices)["choice"] == "Female"
    assert parse_response("The answer is C.", choices)["choice"] is None


def test_six_option_question():
    choices = ["One", "Two", "Three", "Four", "Five", "Six"]
    assert parse_response("<think>I count six knocks.</think>The answer is F.", choices)["choice"] == "Six"
    assert parse_response("The answer is (e).", choices)["choice"] == "Five"
    assert parse_response("There are four knocks.", choices)["choice"] == "Four"
    assert parse_response("The answer is G.", choices)["choice"] is None


def test_openai_messages_carry_the_audio_and_the_reasoning(tmp_path):
    clip = tmp_path / "clip.flac"
    clip.write_bytes(b"fLaC-not-really")
    messages = conversation("How many?", answer="Two.", reasoning="I hear two.", system_prompt="Be brief.", audio=clip)
    sent = openai_messages(messages + [{"role": "user", "content": "Sure?"}])
    assert sent[0] == {"role": "system", "content": "Be brief."}
    audio, text = sent[1]["content"]
    assert audio == {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"fLaC-not-really").decode(),
                                                            "format": "flac"}}
    assert text == {"type": "text", "text": "How many?"}
    assert sent[2] == {"role": "assistant", "content": "Two.", "reasoning": "I hear two."}
    assert sent[3] == {"role": "user", "content": "Sure?"}
    assert messages[1]["content"][0]["audio"] == clip  # the caller's conversation is left as it was
    with pytest.raises(ValueError, match="missing.wav does not exist"):
        openai_messages(conversation("How many?", audio=str(tmp_path / "missing.wav")))
    with pytest.raises(ValueError, match="file path or the file's bytes"):
        openai_messages(conversation("How many?", audio={"array": [0.0], "sampling_rate": 16000}))

    # A reply split by a reasoning parser reads as the pipeline's output does; an open think block has no answer yet.
    assert parse_output(chat_reply_text("(b) two", "I hear two."), ["one", "two"]) == parse_output(
        "<think>\nI hear two.\n</think>\n\n(b) two", ["one", "two"])
    assert parse_output(chat_reply_text(None, "I hear"))["answer"] is None
    assert parse_output(chat_reply_text("(b) tw", "I hear two."), ["one", "two"], finished=False)["choice"] is None
    assert chat_reply_text("<think>x</think>y") == "<think>x</think>y"  # a server without a reasoning parser
