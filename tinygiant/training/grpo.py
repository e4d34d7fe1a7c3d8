"""TRL's `GRPOTrainer` for TinyGiant, with each prompt's audio carried through generation and every log-prob pass.

TRL's trainer carries images only: its prompts keep image parts, and its log-prob passes get image tensors. This
subclass keeps TRL's loop (sampling, rewards, advantages, the clipped loss, KL, logging) and adds the audio where TRL
would drop it:

1. `_generate_and_score_completions` first runs the frozen encoders once per distinct clip of the generation batch
   (`encode_batch_audio`): TRL repeats each prompt G times, and the G copies share one encoding, as do repeats
   across steps when a feature cache (`tinygiant.training.feature_cache.AudioFeatureCache`) is given;
2. `_tokenize_prompts` renders the prompts with the chat template and hands generation the encoders' outputs and
   the instruction mask as multimodal fields, which TRL's own `generate` call passes on;
3. `_get_per_token_logps_and_entropies` feeds the same outputs to the old-policy, reference and policy passes
   (through TRL's fused LM head), with the instruction mask the projector's intent query needs.

The projector depends on the question, which is the same across a prompt's G completions: `embed_prompts` runs it
once per distinct (clip, prompt) of a pass and writes its output into every row's placeholders, and the model runs on
those embeddings (`inputs_embeds`) in every log-prob pass, the policy's with its gradient. Generation runs it once per
row, at prefill (TinyGiant's `prepare_inputs_for_generation` does not declare `inputs_embeds`). Where the
parameters are sharded (FSDP, ZeRO-3) and can only be used inside the wrapped forward, the rows carry the encoders'
outputs instead and the projector runs in the forward, once per row. `step_seconds` splits the time of each step into
encoders, generation, log-prob passes (no-grad: old policy and reference; and the policy's forward), backward and the
optimizer; `encoded_clips` counts clips through the encoders.
"""

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOTrainer

from modeling_tinygiant import ENCODED_AUDIO_INPUTS
from processing_tinygiant import load_audio
from tinygiant.training.trainer import ProjectorLearningRate

# What a step's time is split into (`TinyGiantGRPOTrainer.step_seconds`, logged as `time/<part>`).
STEP_PARTS = ("encoders", "generation", "logps_no_grad", "policy_forward", "backward", "optimizer")


def tinygiant_core(model: torch.nn.Module) -> torch.nn.Module:
    """The `TinyGiantModel` inside a model as trainers hold it (DDP-wrapped, PEFT-wrapped, or bare)."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model.model


def left_pad(rows: list[list[int]] | torch.Tensor, width: int) -> torch.Tensor:
    """Rows of 0/1 (lists of different lengths, or a left-padded tensor) left-padded or left-cut to `width`."""
    rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    return torch.stack([torch.nn.functional.pad(row, (width - len(row), 0)) if len(row) <= width else row[-width:]
                        for row in rows])


class TinyGiantGRPOTrainer(ProjectorLearningRate, GRPOTrainer):
    """GRPOTrainer whose rows are TinyGiant prompts about one audio each.

    The dataset gives each row a conversational `prompt` (the user turn with an audio item, as
    `parsing_tinygiant.question_messages` writes it) and the clip in an `audio` column (a path, `{"bytes", "path"}`
    or `{"array", "sampling_rate"}`); other columns (`choices`, `answer`, ...) reach the reward functions.

    Args (besides GRPOTrainer's):
        projector_learning_rate: AdamW learning rate of the projector (its own parameter group).
        feature_cache: an `AudioFeatureCache`: clips it holds never run the encoders, and clips it lacks are stored.
    """

    def __init__(self, *args, projector_learning_rate: float = 1e-4, feature_cache=None, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        self.feature_cache = feature_cache
        self.encoded_clips = 0  # clips through the frozen encoders in this process
        self.step_seconds = defaultdict(float)  # STEP_PARTS, summed since the last log
        self._audio = None  # the rows' encoder outputs and instruction masks while a batch is processed
        model = kwargs.get("model", args[0] if args else None)
        if not hasattr(model, "config"):
            raise TypeError("TinyGiantGRPOTrainer takes the model itself (tinygiant.training.trainer.load_model)")
        # TRL keeps a processor-using model from sampling its image placeholder; TinyGiant's is the audio token, which
        # would likewise mismatch the audio features. TRL reads the id from the config during __init__ only.
        model.config.image_token_id = model.config.audio_token_id
        try:
            super().__init__(*args, **kwargs)
        finally:
            del model.config.image_token_id
        self.add_callback(OptimizerTimer(self))

    # --------------------------------------------------------------------------- the audio of a batch

    @contextlib.contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[part] += time.perf_counter() - start

    @contextlib.contextmanager
    def _carrying(self, audio: dict) -> Iterator[None]:
        """Make `audio` (per-row encoder outputs and instruction masks) what the passes below feed the model."""
        self._audio = audio
        try:
            yield
        finally:
            self._audio = None

    @torch.no_grad()
    def encode_batch_audio(self, audios: list) -> dict[str, torch.Tensor]:
        """The frozen encoders' outputs for each row's audio, stacked per row; each distinct clip is decoded once and
        encoded once (or read from the feature cache)."""
        distinct, rows = {}, []
        for audio in audios:
            reference = _audio_reference(audio)
            rows.append(distinct.setdefault(reference, len(distinct)))
        clips = [None] * len(distinct)
        for audio in audios:
            index = distinct[_audio_reference(audio)]
            if clips[index] is None:
                waveform, rate = load_audio(audio)
                clips[index] = {"array": waveform, "sampling_rate": rate}
        core = tinygiant_core(self.accelerator.unwrap_model(self.model))
        if self.feature_cache is not None:
            keys = [self.feature_cache.key(clip) for clip in clips]
            found = {key: self.feature_cache.get(key) for key in keys}
            missing = [i for i, key in enumerate(keys) if found[key] is None]
            if missing:
                mels = self.processing_class.extract_audio_features([clips[i] for i in missing])
                found.update(self.feature_cache.encode_features([keys[i] for i in missing], **mels))
                self.encoded_clips += len(missing)
            per_clip = [found[key] for key in keys]
            features = {name: torch.stack([clip[name] for clip in per_clip]) for name in per_clip[0]}
        else:
            mels = self.processing_class.extract_audio_features(clips)
            device = core.whisper_encoder.device
            outputs = core.encode_audio(
                torch.as_tensor(mels["whisper_input_features"], device=device, dtype=core.whisper_encoder.dtype),
                torch.as_tensor(mels["clap_input_features"], device=device, dtype=core.htsat_encoder.dtype),
                torch.as_tensor(mels["whisper_lengths"], device=device),
                torch.as_tensor(mels["htsat_lengths"], device=device),
            )
            self.encoded_clips += len(clips)
            features = {name: out for name, out in zip(ENCODED_AUDIO_INPUTS, outputs) if out is not None}
        index = torch.tensor(rows)
        dtype = core.projector.input_proj.weight.dtype
        per_row = {name: value[index].to(self.accelerator.device, dtype) for name, value in features.items()}
        return {**per_row, "audio_index": index.to(self.accelerator.device)}

    @property
    def projector_per_prompt(self) -> bool:
        """Whether the projector may run outside the wrapped forward (not with sharded parameters)."""
        return not (self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def embed_prompts(self, model: torch.nn.Module, input_ids: torch.Tensor, instruction_mask: torch.Tensor,
                      audio: dict[str, torch.Tensor], prompt_width: int) -> torch.Tensor:
        """The LLM's input embeddings of `input_ids` rows, each audio's placeholders filled with the projector's output,
        the projector run once per distinct (clip, prompt) among the rows (eq. 11-15 as `TinyGiantModel.embed_inputs`
        computes them per row)."""
        core = tinygiant_core(model)
        keys = torch.cat([audio["audio_index"][:, None], input_ids[:, :prompt_width]], dim=1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        first = torch.full((len(distinct),), len(keys), device=keys.device).scatter_reduce(
            0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
        embeds = core.get_input_embeddings()(input_ids)
        placeholders = core.get_placeholder_mask(input_ids, embeds, num_audios=len(input_ids))
        intent_query = None
        if core.config.use_intent_query:
            intent_query = core.get_intent_query(embeds[first], instruction_mask[first], placeholders[first])
        encoded = {name: audio[name][first] for name in ENCODED_AUDIO_INPUTS if name in audio}
        audio_embeds = core.get_audio_features(intent_query=intent_query, **encoded).pooler_output
        return embeds.masked_scatter(placeholders[..., None].expand_as(embeds), audio_embeds[inverse].to(embeds.dtype))

    # --------------------------------------------------------------------------- TRL's hooks

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        if any(row.get("audio") is None for row in inputs):
            raise ValueError("every GRPO row needs its clip in the `audio` column (load the data with "
                             "tinygiant.training.multiple_choice, which skips and counts rows without one)")
        with self._timed("encoders"):
            audio = self.encode_batch_audio([row["audio"] for row in inputs])
        with self._carrying(audio):
            output = super()._generate_and_score_completions(inputs)
            output.update({name: value for name, value in audio.items() if name != "instruction_mask"})  # per row
            output["instruction_mask"] = left_pad(audio["instruction_mask"], output["prompt_ids"].shape[1]).to(
                output["prompt_ids"].device)
        return output

    def _tokenize_prompts(self, prompts: list):
        texts = self.processing_class.apply_chat_template(
            prompts, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False,
            **self.chat_template_kwargs,
        )
        # One audio per prompt; its marker becomes N placeholders. The encoders' outputs come from
        # `encode_batch_audio`, so the processor makes no mels (`extract_audio_features=False`).
        tokenized = self.processing_class(text=texts, audio=[None] * len(texts), extract_audio_features=False,
                                          padding_side="left")
        keep = tokenized["attention_mask"].bool()
        prompt_ids = [ids[row].tolist() for ids, row in zip(tokenized["input_ids"], keep)]
        instruction_mask = [mask[row].tolist() for mask, row in zip(tokenized["instruction_mask"], keep)]
        self._audio["instruction_mask"] = instruction_mask
        # TRL passes tensors to `generate` as they are, and left-pads per-token lists as it pads the prompt ids.
        # (Generation cannot take `embed_prompts`' output: the model's `prepare_inputs_for_generation` does not
        # declare `inputs_embeds`, so `generate` refuses it; the projector runs per row, at prefill only.)
        fields = {name: value for name, value in self._audio.items() if name in ENCODED_AUDIO_INPUTS}
        return prompt_ids, None, {**fields, "instruction_mask": instruction_mask}

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Each completion's row (TRL hands row i's columns to completion i) says whether it ended before the length
        # limit, so the rewards read a cut completion as the evaluation does: without an answer.
        inputs = [{**row, "finished": bool(ids) and ids[-1] in self.eos_token_ids}
                  for row, ids in zip(inputs, completion_ids_list, strict=True)]
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_single_turn(self, *args, **kwargs):
        with self._timed("generation"):
            return super()._generate_single_turn(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        audio = {name: inputs[name] for name in (*ENCODED_AUDIO_INPUTS, "audio_index", "instruction_mask")
                 if name in inputs}
        with self._carrying(audio):
            return super()._compute_loss(model, inputs)

    def compute_loss(self, model: torch.nn.Module, inputs: dict, *args, **kwargs) -> torch.Tensor:
        start = time.perf_counter()
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        self._loss_done = time.perf_counter()
        self.step_seconds["policy_forward"] += self._loss_done - start
        return loss

    def training_step(self, model: torch.nn.Module, inputs: dict,
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        output = super().training_step(model, inputs, num_items_in_batch)
        self.step_seconds["backward"] += time.perf_counter() - self._loss_done
        return output

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **image_inputs):
        """TRL's log-prob pass over `input_ids` (prompt + completion), with each row's audio: the encoders' outputs
        and the prompt's instruction mask, from the batch being processed."""
        if self._audio is None:
            raise RuntimeError("a TinyGiant log-prob pass needs the rows' audio; it runs only inside a training step")
        if any(value is not None for value in image_inputs.values() if not isinstance(value, list)):
            given = sorted(k for k, v in image_inputs.items() if v is not None)
            raise ValueError(f"TinyGiant takes audio, not {given}")
        timing = self._timed("logps_no_grad") if not torch.is_grad_enabled() else contextlib.nullcontext()
        prompt_width = input_ids.shape[1] - logits_to_keep
        instruction_mask = left_pad(self._audio["instruction_mask"], prompt_width).to(input_ids.device)
        instruction_mask = torch.nn.functional.pad(instruction_mask, (0, logits_to_keep))
        batch_size = batch_size or input_ids.size(0)
        logps, entropies, aux_losses = [], [], []
        with timing:
            for start in range(0, input_ids.size(0), batch_size):
                rows = slice(start, start + batch_size)
                labels = input_ids[rows].masked_fill(attention_mask[rows] == 0, -100)
                labels[:, :-logits_to_keep] = -100  # only the completion is scored
                inputs = {"attention_mask": attention_mask[rows]}
                if compute_aux_loss:
                    inputs["output_router_logits"] = True
                with self.accelerator.autocast():
                    if self.projector_per_prompt:
                        audio = {name: value[rows] for name, value in self._audio.items() if name != "instruction_mask"}
                        inputs["inputs_embeds"] = self.embed_prompts(model, input_ids[rows], instruction_mask[rows],
                                                                     audio, prompt_width)
                    else:
                        inputs.update(input_ids=input_ids[rows], instruction_mask=instruction_mask[rows],
                                      **{name: self._audio[name][rows] for name in ENCODED_AUDIO_INPUTS
                                         if name in self._audio})
                    outputs = model(**inputs, labels=labels, fused_lm_head=True)
                logps.append(outputs.log_probs[:, -logits_to_keep:])
                if compute_entropy:
                    entropies.append(outputs.entropy[:, -logits_to_keep:])
                if compute_aux_loss:
                    aux_losses.append(outputs.aux_loss)
        return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None,
                torch.stack(aux_losses).mean() if compute_aux_loss else None)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.model.training and self.step_seconds:
            logs.update({f"time/{part}": round(self.step_seconds[part], 4) for part in STEP_PARTS})
            logs["encoded_clips"] = self.encoded_clips
            self.step_seconds.clear()
        super().log(logs, *args, **kwargs)


def _audio_reference(audio) -> str | int:
    """What identifies a row's clip before decoding: its path, or the identity of its bytes or array (TRL's G copies
    of a prompt hold the same object)."""
    if isinstance(audio, str):
        return audio
    if isinstance(audio, dict):
        if audio.get("bytes") is not None:
            return hash(audio["bytes"])
        if audio.get("path") is not None and audio.get("array") is None:
            return audio["path"]
        return id(audio.get("array"))
    return id(audio)


class OptimizerTimer(TrainerCallback):
    """Adds the optimizer step's seconds to the trainer's `step_seconds`."""

    def __init__(self, trainer: TinyGiantGRPOTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs) -> None:
        self.start = time.perf_counter()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs) -> None:
        self.trainer.step_seconds["optimizer"] += time.perf_counter() - self.start
