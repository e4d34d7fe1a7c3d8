"""The checkpoint loads with nothing but transformers and the dependencies: a fresh process, project not importable."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
from helpers import without


def run_fresh(script, cwd, also_block=(), check=True):
    result = subprocess.run(
        [sys.executable, "-c", without(*also_block) + textwrap.dedent(script)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_auto_classes_load_and_generate_in_a_fresh_process(tiny_dir, tmp_path):
    rate = 44100
    t = np.arange(3 * rate) / rate
    soundfile.write(tmp_path / "clip.wav", 0.3 * np.sin(2 * np.pi * 660 * t), rate)
    work = tmp_path / "elsewhere"
    work.mkdir()
    output = run_fresh(
        f"""
        import json, soundfile, torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
        path = {str(tiny_dir)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        waveform, rate = soundfile.read({str(tmp_path / "clip.wav")!r}, dtype="float32")
        messages = [{{"role": "user", "content": [{{"type": "audio"}}, {{"type": "text", "text": "What is it?"}}]}}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, audio=waveform, sampling_rate=rate)
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        causal = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
        print(json.dumps({{
            "config": type(config).__name__, "model": type(model).__name__, "causal": type(causal).__name__,
            "processor": type(processor).__name__, "module": type(model).__module__,
            "new_tokens": out.shape[1] - inputs["input_ids"].shape[1],
            "frozen": not any(p.requires_grad for e in model.model.audio_encoders() for p in e.parameters()),
        }}))
        """,
        cwd=work,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result == {
        "config": "TinyGiantConfig", "model": "TinyGiantForConditionalGeneration",
        "causal": "TinyGiantForConditionalGeneration", "processor": "TinyGiantProcessor",
        "module": result["module"], "new_tokens": 4, "frozen": True,
    }
    assert result["module"].startswith("transformers_modules.")  # the copy shipped in the checkpoint


def test_checkpoint_ships_its_code_and_auto_map(tiny_dir):
    files = {p.name for p in tiny_dir.iterdir()}
    assert {"configuration_tinygiant.py", "modeling_tinygiant.py", "processing_tinygiant.py", "model.safetensors",
            "processor_config.json", "chat_template.jinja", "tokenizer.json"} <= files
    auto_map = json.loads((tiny_dir / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_tinygiant.TinyGiantConfig",
        "AutoModel": "modeling_tinygiant.TinyGiantForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_tinygiant.TinyGiantForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_tinygiant.TinyGiantForConditionalGeneration",
    }
    processor_config = json.loads((tiny_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tinygiant.TinyGiantProcessor"


def test_automodel_generates_without_soundfile_soxr_or_the_processor(tiny_dir, tmp_path):
    """The model needs torch + transformers + safetensors alone: audio decoding belongs to the processor."""
    output = run_fresh(
        f"""
        import json, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tiny_dir)!r}, trust_remote_code=True).eval()
        config = model.config
        n, question = config.num_audio_tokens, torch.arange(20, 40)
        input_ids = torch.cat([torch.full((n,), config.audio_token_id), question])[None]
        inputs = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            instruction_mask=(input_ids != config.audio_token_id).long(),
            whisper_input_features=torch.randn(1, config.whisper_config.num_mel_bins, 3000),
            clap_input_features=torch.randn(1, 1, 1001, 64),
            whisper_lengths=torch.tensor([150]), htsat_lengths=torch.tensor([4]),  # a 3 s clip
        )
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        print(json.dumps({{"new_tokens": out.shape[1] - input_ids.shape[1], "module": type(model).__module__}}))
        """,
        cwd=tmp_path, also_block=["soundfile", "soxr"],
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result["new_tokens"] == 5 and result["module"].startswith("transformers_modules.")


def test_a_missing_dependency_of_remote_code_is_named_not_hidden(tiny_dir, tmp_path):
    """The sibling-import fallback must not turn "no soundfile" into "no configuration_tinygiant"."""
    result = run_fresh(
        f"""
        from transformers import AutoProcessor
        AutoProcessor.from_pretrained({str(tiny_dir)!r}, trust_remote_code=True)
        """,
        cwd=tmp_path, also_block=["soundfile"], check=False,
    )
    assert result.returncode != 0
    assert "soundfile" in result.stderr.strip().splitlines()[-1]
    assert "configuration_tinygiant" not in result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained_dir(tiny_dir, tmp_path_factory):
    """What `train_sft.py` writes to its output_dir (one step, from the tiny checkpoint)."""
    import train_sft
    from tinygiant.demo.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("trained")
    make_synthetic_dataset(root / "data", n_train=2, n_heldout=0, tasks=["higher_tone"])
    train_sft.main(*train_sft.parse_args([
        "--model_name_or_path", str(tiny_dir), "--dataset_files", str(root / "data" / "train.jsonl"),
        "--output_dir", str(root / "run"), "--use_cpu", "--bf16", "false", "--report_to", "none",
        "--per_device_train_batch_size", "2", "--effective_batch_size", "2", "--max_steps", "1",
        "--save_strategy", "no", "--activation_checkpointing", "false",
    ]))
    return root / "run"


@pytest.mark.parametrize("folder", ["tiny_dir", "trained_dir"])
def test_every_folder_the_project_writes_runs_the_pipeline_without_the_project(folder, request, tmp_path):
    path = request.getfixturevalue(folder)
    output = run_fresh(
        f"""
        import json, numpy as np
        from transformers import pipeline
        pipe = pipeline("audio-reasoning", model={str(path)!r}, trust_remote_code=True)
        out = pipe(np.zeros(16000, dtype=np.float32), sampling_rate=16000, question="Is it silent?",
                   choices=["yes", "no"], max_new_tokens=3, do_sample=False)
        print(json.dumps({{"keys": sorted(out), "module": type(pipe).__module__}}))
        """,
        cwd=tmp_path,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result["keys"] == ["answer", "choice", "text", "thinking"]
    assert result["module"].startswith("transformers_modules.")
