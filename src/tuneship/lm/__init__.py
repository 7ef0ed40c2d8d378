"""The causal-LM track: corpus/instruction data, LoRA fine-tuning, perplexity, registration."""
