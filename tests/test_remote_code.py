"""The checkpoint loads with nothing but transformers and the dependencies: a fresh process, project not importable."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import soundfile

PROJECT_MODULES = [
    "configuration_tinygiant", "modeling_tinygiant", "processing_tinygiant", "parsing_tinygiant",
    "pipeline_tinygiant", "tiny_checkpoint",
]

# The project is pip-installed in development mode, so a fresh interpreter could import it from anywhere:
# a finder placed first on sys.meta_path makes its modules unimportable, as on a user's machine.
BLOCK_PROJECT = f"""
import importlib.abc, sys
class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_MODULES!r}:
            raise ImportError(f"{{name}} is not installed here")
sys.meta_path.insert(0, BlockProject())
for name in {PROJECT_MODULES!r}:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(name + " should not be importable")
"""


def run_fresh(script, cwd):
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PROJECT + textwrap.dedent(script)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


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
    )
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
    }
    processor_config = json.loads((tiny_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tinygiant.TinyGiantProcessor"
