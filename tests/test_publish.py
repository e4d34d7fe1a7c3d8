"""The Hub repo folder: complete, with a model card the Hub can index; pushing offline fails cleanly."""

import hashlib
import json

import pytest
from huggingface_hub import ModelCard

from modeling_tinygiant import TinyGiantForConditionalGeneration
from tinygiant.hub.publish import BASE_MODELS, SHIPPED_CODE, missing_files, push_to_hub, save_checkpoint

EXPECTED_FILES = {
    *SHIPPED_CODE, "config.json", "generation_config.json", "model.safetensors", "processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md",
}


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory, tiny_dir, processor):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir)  # our own copy: its config gets changed
    summary = {"base": "tiny random", "steps": 12, "final loss": 3.21, "data": {"rows": 400}}
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("hub"), training_summary=summary,
                           repo_id="someone/tinygiant-test")


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_folder_has_every_file_the_loader_needs(hub_dir):
    assert EXPECTED_FILES <= {p.name for p in hub_dir.iterdir()}
    assert missing_files(hub_dir) == []
    config = json.loads((hub_dir / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_tinygiant.TinyGiantConfig"
    for auto_class in ("AutoModel", "AutoModelForCausalLM"):
        assert config["auto_map"][auto_class] == "modeling_tinygiant.TinyGiantForConditionalGeneration"
    assert config["custom_pipelines"] == {
        "audio-reasoning": {"impl": "pipeline_tinygiant.TinyGiantAudioReasoningPipeline",
                            "pt": ["AutoModelForCausalLM"], "type": "multimodal"}
    }
    processor_config = json.loads((hub_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tinygiant.TinyGiantProcessor"
    assert "<audio>" in (hub_dir / "chat_template.jinja").read_text()
    # The shipped pipeline imports its parser as a sibling, so that the loader copies it too.
    assert "from .parsing_tinygiant import" in (hub_dir / "pipeline_tinygiant.py").read_text()


def test_model_card_metadata_usage_and_training_summary(hub_dir):
    card = ModelCard.load(hub_dir / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "audio-text-to-text"
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == BASE_MODELS
    assert data["datasets"] == ["zhifeixie/Audio-Reasoner-CoTA"]
    assert {"audio", "custom_code"} <= set(data["tags"])
    assert 'pipeline("audio-reasoning", model="someone/tinygiant-test", trust_remote_code=True)' in card.text
    assert 'AutoModel.from_pretrained("someone/tinygiant-test", trust_remote_code=True)' in card.text
    assert "## Training" in card.text and "| final loss | 3.21 |" in card.text and '{"rows": 400}' in card.text


def test_push_offline_fails_clearly_and_leaves_the_folder_intact(hub_dir):
    before = digest(hub_dir)
    with pytest.raises(RuntimeError, match="could not reach the Hugging Face Hub to push someone/tinygiant-test"):
        push_to_hub(hub_dir, "someone/tinygiant-test", token="hf_not_a_real_token")
    assert digest(hub_dir) == before and missing_files(hub_dir) == []


def test_push_refuses_an_incomplete_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match=r"not a complete TinyGiant Hub folder \(missing \['configuration_tinygiant"):
        push_to_hub(tmp_path, "someone/tinygiant-test")


def test_saving_again_replaces_stale_code(tiny_dir, processor, tmp_path):
    (tmp_path / "pipeline_tinygiant.py").write_text("raise ImportError('stale')\n")
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir)
    save_checkpoint(model, processor, tmp_path)
    assert "stale" not in (tmp_path / "pipeline_tinygiant.py").read_text()


def test_space_folder_runs_the_app_with_its_examples(tmp_path):
    from huggingface_hub import SpaceCard

    from tinygiant import cli
    from tinygiant.serving.web_app import SPACE_CODE

    assert cli.main(["publish", "--space", str(tmp_path / "space"), "--repo-id", "someone/tinygiant"]) == 0
    space = tmp_path / "space"
    assert {*SPACE_CODE, "requirements.txt", "README.md", "space.json", "examples"} <= {p.name for p in space.iterdir()}
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.models == ["someone/tinygiant"]
    assert any(line.startswith("gradio>=6") for line in (space / "requirements.txt").read_text().splitlines())
    assert json.loads((space / "space.json").read_text()) == {"model": "someone/tinygiant"}
    examples = json.loads((space / "examples" / "examples.json").read_text())
    assert examples and all((space / "examples" / row["audio"]).is_file() and row["question"] for row in examples)
    assert cli.main(["publish", "--space", str(space), "ckpt", "out"]) == 1  # a Space folder takes no checkpoint
