"""Serving: import the registry's champion into BentoML and build the bento in `bentos/`.

The service itself (`bentos/service.py`) stays free of this package and of MLflow, so the bento
only needs torch + transformers at run time.
"""
