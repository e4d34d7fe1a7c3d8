"""TRL's own `SFTTrainer` on the tiny model, with no project code between them (`tests/test_train_sft.py` tests the
project's script and trainer): what trains, what stays frozen, and that the audio is used."""

import torch
from datasets import Dataset
from helpers import chat, tone
from trl import SFTConfig, SFTTrainer

from modeling_tinygiant import TinyGiantForConditionalGeneration


def test_sft_trainer_trains_projector_and_llm_not_encoders(tiny_dir, processor, tmp_path):
    model = TinyGiantForConditionalGeneration.from_pretrained(tiny_dir)
    rows = [{"freq": f, "answer": "high" if f > 1000 else "low"} for f in (300, 2000, 400, 3000)] * 2
    dataset = Dataset.from_list(rows)

    def collate(batch, zero_audio=False):
        texts = [processor.apply_chat_template(chat("Is the tone high or low?", answer=r["answer"]), tokenize=False)
                 for r in batch]
        audio = [tone(1.0, freq=r["freq"]) * (0 if zero_audio else 1) for r in batch]
        return processor(text=texts, audio=audio, sampling_rate=16000, output_labels=True, padding_side="right")

    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
            activation_checkpointing=True, max_length=None, remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True},
        ),
        train_dataset=dataset,
        data_collator=collate,
        processing_class=processor,
    )
    trainer.train()

    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.projector.") for k in changed)
    assert any(k.startswith("model.language_model.") for k in changed)
    encoders = ("model.whisper_encoder.", "model.htsat_encoder.", "model.clap_encoder.")
    assert not any(k.startswith(encoders) for k in changed)
    assert all(not m.training for e in model.model.audio_encoders() for m in e.modules())

    # The loss TRL optimises (fused LM head through model.model) depends on the audio.
    model.eval()
    batch = collate([rows[0], rows[1]])
    silent = collate([rows[0], rows[1]], zero_audio=True)
    with torch.no_grad():
        assert abs(model(**batch).loss.item() - model(**silent).loss.item()) > 1e-4
        hidden = model.model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        hidden_silent = model.model(**{k: v for k, v in silent.items() if k != "labels"}).last_hidden_state
    assert not torch.allclose(hidden, hidden_silent)
