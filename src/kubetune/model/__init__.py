"""Model loading (local, s3://, GGUF, embedded) and fine-tuning setup (LoRA, freeze, full, QLoRA)."""
