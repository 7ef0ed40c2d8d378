"""Stage 3: score the fine-tuned model on the held-out test split and report on it."""
