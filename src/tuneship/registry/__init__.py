"""Stages 4–5: MLflow tracking, model registration, the promotion gate and rollback."""
