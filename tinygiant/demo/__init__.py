"""The offline demo (`tinygiant demo`): a tiny TinyGiant trained, scored and asked on synthetic data, on a CPU.

`sft` is the command: the model trained against a control trained on silence, `--ablation` for the paper's Table 3
variants (`ablation`: the multi-seed protocol on the scene benchmark), `--grpo` for GRPO after SFT against SFT alone
(`grpo`).
`synthetic` generates the data (beeps, tones, chords, noise, speech, scenes) in the CoTA format; `toy_training` holds
the demo's training preset, runs its trainings (`train_sft.py` in subprocesses) and scores them through the synthetic
benchmark.
"""
