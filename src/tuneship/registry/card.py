"""The model card: one frame for every task (lineage, test figures, training), with the task's
own sections inside."""

from __future__ import annotations

LINEAGE_ROWS = {"run_id": "MLflow run", "git_commit": "git commit", "base_model": "base model",
                "base_model.sha256": "base weights SHA-256", "data_source": "data source",
                "data_fingerprint": "data fingerprint"}


def model_card(name: str, version: str, task: str, lineage: dict[str, str], stats: dict,
               report: dict, train: dict, task_section: str) -> str:
    """Render the card of `name` v`version` as markdown."""
    rows = "\n".join(f"| {label} | `{lineage[key]}` |" for key, label in LINEAGE_ROWS.items()
                     if lineage.get(key))
    splits = " / ".join(str(stats["rows"][s]) for s in ("train", "validation", "test"))
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in report["metrics"].items())
    low, high = report["interval"]
    runtime = train.get("train_runtime", float("nan"))
    return f"""# Model card: {name} v{version}

Fine-tuned by Tuneship from **{lineage.get('base_model', '?')}** on the **{stats['dataset']}**
dataset (task: {task}).

## Lineage
| | |
|---|---|
{rows}
| rows (train / validation / test) | {splits} |

## Test split ({report['rows']} rows)
| metric | value |
|---|---|
{metrics}

{report['headline']}: {report['confidence']:.0%} bootstrap interval [{low:.4f}, {high:.4f}].

## Training
{runtime:.0f} s, {train.get('train_samples_per_second', float('nan')):.1f} samples/s.

## About this model
{task_section}
"""
