"""Fine-tuning as a service: OpenAI-shaped Files and fine-tuning jobs API (`api.py`), a durable
SQLAlchemy store (`store.py`), and a local executor (`worker.py`: huey, each job in its own
process running one `tuneship.run_pipeline` call, `runner.py`). See README.md here."""
