"""The public toolkit for plugin authors: model loading, decoding, per-example LoRA, distillation losses."""
