"""Training TinyGiant with TRL: the data and collator (`data`), the frozen encoders' feature cache (`feature_cache`),
and the trainers with what SFT and GRPO share (`trainer`: two learning rates, model loading, LoRA, the final save)."""
