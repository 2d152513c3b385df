"""The Qwen3 family, in one place: what the converter, the rollout engines and the trainer share.

- `shapes`: `Qwen3Shape` and the named presets (pure data);
- `hf`: Hugging Face config <-> shape, and transformers Qwen3 models built from a shape (the embedded engine's);
- `names`: the declarative Megatron <-> Hugging Face parameter-name map, one entry per tensor;
- `support`: which Qwen3 configs the Megatron model implements (conversion refuses the rest, naming the field);
- `provider`: the Megatron-Core `GPTModel` of a shape (layer spec, `TransformerConfig`);
- `live`: a live Megatron model's weights streamed under Hugging Face names (weight sync and export);
- `model_info`: the `model_info.json` record beside every model checkpoint (one format, one reader).

Only `provider` and `live` import Megatron-Core, and lazily where they can; nothing is imported here.
"""
