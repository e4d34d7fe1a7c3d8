"""TinyGiantProcessor: audio decoding and windows, placeholder expansion, instruction mask, labels, bad input."""

import numpy as np
import pytest
import soundfile
import torch
from helpers import chat, tone

from processing_tinygiant import load_audio


def render(processor, messages, **kwargs):
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def decode_where(processor, ids, mask):
    return processor.tokenizer.decode(ids[mask.bool()])


def test_placeholder_expansion_and_feature_shapes(processor):
    text = render(processor, chat("How many beeps?"), add_generation_prompt=True)
    assert text.count("<audio>") == 1
    batch = processor(text=text, audio=tone(5.0), sampling_rate=16000)
    assert (batch["input_ids"] == processor.audio_token_id).sum() == processor.num_audio_tokens == 300
    assert batch["whisper_input_features"].shape == (1, 128, 3000)
    assert batch["clap_input_features"].shape == (1, 1, 1001, 64)
    assert batch["whisper_lengths"].tolist() == [250] and batch["htsat_lengths"].tolist() == [16]


def test_text_only_mode_for_cached_features_gives_the_same_text_tensors(processor):
    text = render(processor, chat("How many beeps?", answer="Two."))
    full = processor(text=text, audio=tone(2.0), sampling_rate=16000, output_labels=True)
    text_only = processor(text=text, audio=tone(2.0), sampling_rate=16000, output_labels=True,
                          extract_audio_features=False)
    assert set(text_only) == {"input_ids", "attention_mask", "instruction_mask", "labels"}
    for key in text_only:
        assert torch.equal(text_only[key], full[key]), key
    with pytest.raises(ValueError, match="markers"):  # the audios must still match the markers
        processor(text=text, audio=[], extract_audio_features=False)


@pytest.mark.parametrize("seconds, whisper_windows, htsat_windows", [(5, 1, 1), (29, 1, 3), (31, 2, 4), (65, 3, 7)])
def test_long_audio_is_cut_into_deterministic_windows(processor, seconds, whisper_windows, htsat_windows):
    noise = np.random.default_rng(0).standard_normal(seconds * 8000).astype(np.float32) * 0.1
    first = processor(text="<audio>Describe.", audio=noise, sampling_rate=8000)
    again = processor(text="<audio>Describe.", audio=noise, sampling_rate=8000)
    assert first["whisper_input_features"].shape[0] == whisper_windows
    assert first["clap_input_features"].shape[0] == htsat_windows
    assert first["whisper_lengths"].item() == seconds * 50
    assert first["htsat_lengths"].item() == int(np.ceil(seconds * 3.2))
    # No random crops: the same audio always gives the same features.
    assert torch.equal(first["clap_input_features"], again["clap_input_features"])
    assert torch.equal(first["whisper_input_features"], again["whisper_input_features"])


def test_audio_inputs_are_equivalent_and_resampled_from_the_source(processor, tmp_path):
    wav = tone(2.0, 44100, freq=1000.0)
    stereo = np.stack([wav, wav], axis=1)
    path = tmp_path / "clip.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")

    def features(item, **kwargs):
        return processor(text="<audio>x", audio=item, **kwargs)

    float_inputs = [features(wav, sampling_rate=44100),
                    features(torch.from_numpy(stereo.T.copy()), sampling_rate=44100),
                    features({"array": wav, "sampling_rate": 44100})]
    pcm_inputs = [features(str(path)), features({"bytes": path.read_bytes(), "path": None}),
                  features(soundfile.read(path, dtype="int16")[0], sampling_rate=44100)]
    for group in (float_inputs, pcm_inputs):
        for other in group[1:]:
            for key in ("whisper_input_features", "clap_input_features"):
                torch.testing.assert_close(other[key], group[0][key], atol=1e-2, rtol=1e-3)
    # 16-bit quantisation only moves Whisper's log-mels (clamped 80 dB below the peak) by a hair.
    torch.testing.assert_close(pcm_inputs[0]["whisper_input_features"], float_inputs[0]["whisper_input_features"],
                               atol=1e-2, rtol=0)


def test_load_audio_mixes_channels_and_scales_int_pcm():
    left, right = np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)
    mono, rate = load_audio(np.stack([left, right]), sampling_rate=8000)  # (channels, samples)
    assert rate == 8000 and mono.shape == (100,) and np.allclose(mono, 0.125)
    mono, _ = load_audio(np.array([-32768, 0, 16384], dtype=np.int16), sampling_rate=8000)
    assert np.allclose(mono, [-1.0, 0.0, 0.5])


def test_instruction_mask_is_exactly_the_user_text(processor):
    messages = chat("Which tone is higher?", answer="The second.", reasoning="<SUMMARY>high</SUMMARY>",
                    system="You are an audio model.")
    batch = processor(text=render(processor, messages), audio=tone(1.0), sampling_rate=16000)
    assert decode_where(processor, batch["input_ids"][0], batch["instruction_mask"][0]) == "Which tone is higher?"


def test_raw_prompt_without_chat_markup_is_all_instruction(processor):
    batch = processor(text="<audio>Is there speech?", audio=tone(1.0), sampling_rate=16000)
    assert decode_where(processor, batch["input_ids"][0], batch["instruction_mask"][0]) == "Is there speech?"


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_labels_cover_only_assistant_tokens_with_end_of_turn(processor, padding_side):
    conversations = [
        chat("How many beeps?", answer="Three.", reasoning="<SUMMARY>\nThree beeps.</SUMMARY>", system="Be brief."),
        chat("Is it a chord or a single note, and why?", answer="A chord."),
    ]
    texts = [render(processor, c) for c in conversations]
    batch = processor(text=texts, audio=[tone(1.0), tone(2.0)], sampling_rate=16000, output_labels=True,
                      padding_side=padding_side)
    labels = batch["labels"]
    expected = ["<think>\n<SUMMARY>\nThree beeps.</SUMMARY>\n</think>\n\nThree.<|im_end|>", "A chord.<|im_end|>"]
    for row, text in enumerate(expected):
        trained = labels[row][labels[row] != -100]
        assert processor.tokenizer.decode(trained) == text
        # Trained positions carry their own input id (unshifted labels) and are one contiguous span.
        positions = (labels[row] != -100).nonzero().flatten()
        assert torch.equal(batch["input_ids"][row][positions], trained)
        assert positions[-1] - positions[0] + 1 == len(positions)
    assert not (labels[batch["input_ids"] == processor.audio_token_id] != -100).any()
    assert not (labels[batch["attention_mask"] == 0] != -100).any()


def test_left_and_right_padding_give_the_same_masks(processor):
    texts = [render(processor, chat("Short?", answer="Yes.")),
             render(processor, chat("A longer question here?", answer="No."))]
    audio = [tone(1.0), tone(1.0)]
    left = processor(text=texts, audio=audio, sampling_rate=16000, output_labels=True, padding_side="left")
    right = processor(text=texts, audio=audio, sampling_rate=16000, output_labels=True, padding_side="right")
    for key in ("labels", "instruction_mask", "input_ids"):
        for row in range(2):
            kept_left = left[key][row][left["attention_mask"][row].bool()]
            kept_right = right[key][row][right["attention_mask"][row].bool()]
            assert torch.equal(kept_left, kept_right), key


def test_silence_is_valid_audio(processor):
    batch = processor(text="<audio>Anything?", audio=np.zeros(16000, np.float32), sampling_rate=16000)
    assert torch.isfinite(batch["whisper_input_features"]).all() and torch.isfinite(batch["clap_input_features"]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(audio=np.zeros(1000, np.float32)), "sampling_rate"),
        (dict(audio=np.zeros(0, np.float32), sampling_rate=16000), "at least 2"),
        (dict(audio=np.zeros(1, np.float32), sampling_rate=16000), "at least 2"),
        (dict(audio=np.array([0.0, np.nan, 0.1], np.float32), sampling_rate=16000), "NaN or Inf"),
        (dict(audio=np.array([0.0, np.inf, 0.1], np.float32), sampling_rate=16000), "NaN or Inf"),
        (dict(audio=[tone(1.0), tone(1.0)], sampling_rate=16000), "1 `<audio>` markers but 2 audios"),
        (dict(audio=np.zeros(601 * 100, np.float32), sampling_rate=100), "maximum is 600"),
    ],
)
def test_bad_audio_input_raises_a_named_error(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(text="<audio>What is it?", **kwargs)


def test_unreadable_files_raise_clear_errors(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        processor(text="<audio>x", audio=str(tmp_path / "missing.wav"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wav file")
    with pytest.raises(ValueError, match="cannot decode audio file .*corrupt.wav"):
        processor(text="<audio>x", audio=str(corrupt))


def test_chat_template_renders_cota_reasoning_in_think_block(processor):
    messages = chat("Q?", answer="A.", reasoning="<PLANNING>\nplan</PLANNING>")
    text = render(processor, messages)
    assert text.endswith("<|im_start|>assistant\n<think>\n<PLANNING>\nplan</PLANNING>\n</think>\n\nA.<|im_end|>\n")
    prompt = render(processor, chat("Q?"), add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n<audio>Q?<|im_end|>\n<|im_start|>assistant\n")
    # `{% generation %}` lets transformers' own assistant mask find the same span as our labels.
    encoded = processor.tokenizer.apply_chat_template(
        messages, chat_template=processor.chat_template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = np.array(encoded["input_ids"])[np.array(encoded["assistant_masks"], dtype=bool)]
    assert processor.tokenizer.decode(ids) == "<think>\n<PLANNING>\nplan</PLANNING>\n</think>\n\nA.<|im_end|>"
