"""Stage 1: load, clean, validate, split, tokenize and fingerprint a dataset."""
