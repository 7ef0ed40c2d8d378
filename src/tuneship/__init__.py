"""Tuneship: the lifecycle of a fine-tuned language model."""
