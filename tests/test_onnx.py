"""ONNX: `tinygiant export onnx` on a tiny checkpoint, its graphs against the PyTorch model, and `onnx_tinygiant`'s
`TinyGiantOnnx` in a Python without torch (`.venv-onnx/`, from install.sh) answering as the pipeline does."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile
import torch
from helpers import talkative, tone

from modeling_tinygiant import TinyGiantForConditionalGeneration
from onnx_tinygiant import ONNX_PARTS, VARIANTS, TinyGiantOnnx, onnx_path
from pipeline_tinygiant import load_pipeline
from tinygiant import cli
from tinygiant.export.onnx import export_onnx
from tinygiant.hub.publish import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE_PYTHON = ROOT / ".venv-onnx" / "bin" / "python"
GREEDY = {"max_new_tokens": 12, "do_sample": False}
QUESTION = {"question": "What is making this sound?", "choices": ["a dog", "a bell", "rain"]}
FOLLOW_UP = {"question": "Is it loud?"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dir, processor):
    model = talkative(TinyGiantForConditionalGeneration.from_pretrained(tiny_dir).eval())
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("onnx") / "model")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "exported"
    assert cli.main(["export", "onnx", str(checkpoint), str(out), "--dtypes", *VARIANTS]) == 0
    return out


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return load_pipeline(checkpoint, dtype=torch.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 2.5 s file at 22.05 kHz and a 31 s array at 44.1 kHz (two Whisper windows, four HTS-AT windows)."""
    folder = tmp_path_factory.mktemp("clips")
    soundfile.write(folder / "short.wav", tone(2.5, 22050, freq=330.0), 22050)
    np.save(folder / "long.npy", tone(31.0, 44100, freq=880.0) * np.linspace(0.2, 1.0, 31 * 44100, dtype=np.float32))
    return folder


def as_audio(path: Path):
    return {"array": np.load(path), "sampling_rate": 44100} if path.suffix == ".npy" else str(path)


def test_the_folder_is_a_complete_hub_folder_with_every_variant(exported):
    assert (exported / "onnx_tinygiant.py").read_text() == (ROOT / "onnx_tinygiant.py").read_text()
    for name in ("config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        assert (exported / name).is_file()
    for part in ONNX_PARTS:
        for dtype in VARIANTS:
            assert onnx_path(exported, part, dtype).is_file(), (part, dtype)
    assert (exported / "onnx" / "decoder_model_merged_quantized.onnx").is_file()  # transformers.js's name for q8


def test_audio_encoder_graph_serves_any_number_of_windows_and_audios(exported, checkpoint, processor, clips):
    """Two audios (one window and two Whisper windows; one and four HTS-AT windows) through one run of the graph equal
    `encode_audio`'s per-audio splits and adaptive pooling."""
    model = TinyGiantForConditionalGeneration.from_pretrained(checkpoint).eval()
    features = processor.extract_audio_features([str(clips / "short.wav"), as_audio(clips / "long.npy")])
    session = onnxruntime.InferenceSession(onnx_path(exported, "audio_encoder"))
    outputs = session.run(None, {i.name: features[i.name] for i in session.get_inputs()})
    expected = model.model.encode_audio(*(torch.from_numpy(features[name]) for name in (
        "whisper_input_features", "clap_input_features", "whisper_lengths", "htsat_lengths")))
    assert len(outputs) == len(expected) == 3
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=2e-4, rtol=1e-3)


def test_decoder_graph_matches_the_model_with_and_without_past(exported, checkpoint):
    model = TinyGiantForConditionalGeneration.from_pretrained(checkpoint).eval()
    runtime = TinyGiantOnnx.from_pretrained(exported)
    decoder = runtime.sessions["decoder_model_merged"]
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    embeds = runtime.embed(ids.numpy())
    empty = np.zeros((1, runtime.past_shape[0], 0, runtime.past_shape[1]), np.float32)
    first, *presents = decoder.run(None, {"inputs_embeds": embeds[:, :5], "attention_mask": np.ones((1, 5), np.int64),
                                          "position_ids": np.arange(5)[None],
                                          **{name: empty for name in runtime.past_names}})
    second = decoder.run(None, {"inputs_embeds": embeds[:, 5:], "attention_mask": np.ones((1, 6), np.int64),
                                "position_ids": np.array([[5]]), **dict(zip(runtime.past_names, presents))})[0]
    np.testing.assert_allclose(first[0], logits[4].numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(second[0], logits[5].numpy(), atol=1e-3, rtol=1e-3)


def test_torch_free_runtime_answers_as_the_pipeline(exported, pipe, clips, tmp_path):
    """In `.venv-onnx` (no torch), with the exported folder on sys.path: the greedy texts of the float32 pipeline for a
    22.05 kHz file, a 31 s array at 44.1 kHz, and a follow-up about the first clip, which reuses its encoder output."""
    cases = [{"audio": "short.wav", **QUESTION}, {"audio": "long.npy", **QUESTION}, {"audio": "short.wav", **FOLLOW_UP}]
    expected = [pipe(as_audio(clips / case["audio"]), **{k: v for k, v in case.items() if k != "audio"}, **GREEDY)
                for case in cases]
    script = tmp_path / "ask.py"
    script.write_text(f"""
import json, sys
sys.path.insert(0, {str(exported)!r})
import numpy as np
from onnx_tinygiant import TinyGiantOnnx
try:
    import torch
except ImportError:
    pass
else:
    raise AssertionError("this Python has torch")
model = TinyGiantOnnx.from_pretrained({str(exported)!r})
results = []
for case in json.loads(sys.argv[1]):
    path = {str(clips)!r} + "/" + case.pop("audio")
    audio = {{"array": np.load(path), "sampling_rate": 44100}} if path.endswith(".npy") else path
    results.append(model(audio, **case, **{GREEDY!r}))
print(json.dumps({{"results": results, "hits": model.audio_cache.hits, "torch": "torch" in sys.modules}}))
""")
    if not TORCH_FREE_PYTHON.is_file():
        pytest.fail(f"{TORCH_FREE_PYTHON} is missing: run install.sh, which makes the torch-free environment")
    run = subprocess.run([str(TORCH_FREE_PYTHON), str(script), json.dumps(cases)], capture_output=True, text=True,
                         cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["torch"] is False
    assert report["hits"] == 1  # the follow-up skipped the audio encoder
    assert [r["text"] for r in report["results"]] == [r["text"] for r in expected]
    assert report["results"] == expected
    assert len({r["text"] for r in expected}) == 3  # three different answers: equality is not about a constant output


def test_streaming_gives_the_tokens_of_the_answer(exported, clips):
    class Collector:
        def __init__(self):
            self.calls, self.ended = [], False

        def put(self, value):
            self.calls.append(np.asarray(value).reshape(-1).tolist())

        def end(self):
            self.ended = True

    runtime = TinyGiantOnnx.from_pretrained(exported)
    collector = Collector()
    result = runtime(str(clips / "short.wav"), **QUESTION, streamer=collector, **GREEDY)
    prompt, *tokens = collector.calls
    assert collector.ended and len(tokens) == GREEDY["max_new_tokens"] and all(len(t) == 1 for t in tokens)
    assert prompt[-3:] == runtime.tokenizer("<|im_start|>assistant\n")["input_ids"][-3:]
    assert runtime.tokenizer.decode([t[0] for t in tokens], skip_special_tokens=True) == result["text"]


@pytest.mark.parametrize("dtype", ["q8", "q4", "fp16"])
def test_quantised_variants_track_fp32(exported, clips, dtype):
    """The first answer token's logits of each variant against fp32 (the tiny model's large random weights make
    int8 rounding visible, so the bound is loose; the benchmark measures the full-size model's agreement)."""
    logits = {}
    for variant in ("fp32", dtype):
        runtime = TinyGiantOnnx.from_pretrained(exported, dtype=variant)
        inputs = runtime.prepare(str(clips / "short.wav"), **QUESTION)
        embeds = runtime.prompt_embeddings(inputs)
        length = embeds.shape[1]
        empty = np.zeros((1, runtime.past_shape[0], 0, runtime.past_shape[1]), runtime.past_dtype)
        logits[variant] = runtime.sessions["decoder_model_merged"].run(["logits"], {
            "inputs_embeds": embeds.astype(runtime.embeds_dtype), "attention_mask": np.ones((1, length), np.int64),
            "position_ids": np.arange(length)[None], **{name: empty for name in runtime.past_names}})[0][0]
    assert np.corrcoef(logits["fp32"], logits[dtype].astype(np.float32))[0, 1] > 0.9


BAD_INPUTS = {
    "empty": {"array": np.zeros(0, np.float32), "sampling_rate": 16000},
    "nan": {"array": np.full(16000, np.nan, np.float32), "sampling_rate": 16000},
    "too long": {"array": np.zeros(601 * 1000, np.float32), "sampling_rate": 1000},
    "undecodable": b"this is not an audio file",
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_the_pipelines_error(exported, pipe, name):
    with pytest.raises(Exception) as from_pipeline:
        pipe(BAD_INPUTS[name], question="What is it?", **GREEDY)
    with pytest.raises(Exception) as from_onnx:
        TinyGiantOnnx.from_pretrained(exported)(BAD_INPUTS[name], question="What is it?", **GREEDY)
    assert type(from_onnx.value) is type(from_pipeline.value)
    address = re.compile(r"0x[0-9a-f]+")  # libsndfile names the BytesIO object it could not read
    assert address.sub("0x", str(from_onnx.value)) == address.sub("0x", str(from_pipeline.value))


def test_a_missing_graph_is_named(exported, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(exported, folder)
    onnx_path(folder, "decoder_model_merged").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks onnx/decoder_model_merged\.onnx: .*tinygiant export onnx"):
        TinyGiantOnnx.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        TinyGiantOnnx.from_pretrained(tmp_path / "nowhere")


def test_export_refuses_what_is_not_a_tinygiant_checkpoint(checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"lacks config\.json, processor_config\.json, tokenizer\.json, "
                                         r"tokenizer_config\.json, model\.safetensors"):
        export_onnx(tmp_path, tmp_path / "out")
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoint, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"not a TinyGiant checkpoint: it lacks tokenizer\.json$"):
        export_onnx(folder, tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    shutil.copyfile(checkpoint / "tokenizer.json", folder / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen3"}))
    with pytest.raises(ValueError, match="model_type 'qwen3'"):
        export_onnx(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ask_onnx_on_the_command_line(exported, pipe, clips, capsys):
    code = cli.main(["ask", str(clips / "short.wav"), QUESTION["question"], "--choices", *QUESTION["choices"],
                     "--model", str(exported), "--onnx", "--json", "--greedy", "--max-new-tokens", "12"])
    assert code == 0
    expected = pipe(str(clips / "short.wav"), **QUESTION, **GREEDY)
    assert json.loads(capsys.readouterr().out) == expected


@pytest.mark.parametrize("settings", [{"temperature": 0.7, "top_k": 3, "top_p": None, "min_p": None},
                                      {"temperature": 1.3, "top_k": None, "top_p": 0.8, "min_p": None},
                                      {"temperature": 1.0, "top_k": 5, "top_p": 0.9, "min_p": 0.05}])
def test_sampling_draws_from_what_transformers_warpers_keep(settings):
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(3).normal(size=40).astype(np.float32) * 2
    warpers = [TemperatureLogitsWarper(settings["temperature"])]
    warpers += [TopKLogitsWarper(settings["top_k"])] if settings["top_k"] else []
    warpers += [TopPLogitsWarper(settings["top_p"])] if settings["top_p"] else []
    warpers += [MinPLogitsWarper(settings["min_p"])] if settings["min_p"] else []
    scores = torch.from_numpy(logits)[None]
    for warper in warpers:
        scores = warper(None, scores)
    kept = set(torch.isfinite(scores[0]).nonzero()[:, 0].tolist())
    rng = np.random.default_rng(0)
    drawn = {TinyGiantOnnx.next_token(logits, {"do_sample": True, **settings}, rng) for _ in range(3000)}
    assert drawn == kept and 1 < len(kept) < 40
