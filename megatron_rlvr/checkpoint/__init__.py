"""Checkpoint stage: atomic, verified Megatron dist-checkpoints of both models, their optimizers, RNG and data
position, for exact resume (`store`)."""
