"""Stage 2: fine-tune with `transformers.Trainer` (checkpoints, resume, early stopping)."""
