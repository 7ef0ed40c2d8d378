"""A markdown model card generated from the run's config, data stats and evaluation report."""

from __future__ import annotations


def model_card(name: str, version: str, lineage: dict, stats: dict, report: dict,
               train: dict) -> str:
    """Render the card: what the model is, what it was trained on, how well it does."""
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in report["metrics"].items())
    classes = "\n".join(
        f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} "
        f"| {int(row['support'])} |" for label, row in report["per_class"].items())
    low, high = report["interval"]
    rows = stats["rows"]
    split_rows = f"{rows['train']} / {rows['validation']} / {rows['test']}"
    runtime = train.get("train_runtime", float("nan"))
    speed = train.get("train_samples_per_second", float("nan"))
    return f"""# Model card: {name} v{version}

A text classifier fine-tuned by Tuneship from **{lineage['base_model']}** on the
**{stats['dataset']}** dataset. Labels: {', '.join(stats['label_names'])}.

## Lineage
| | |
|---|---|
| MLflow run | `{lineage['run_id']}` |
| git commit | `{lineage['git_commit']}` |
| data source | `{stats['source']}` |
| data fingerprint | `{stats['fingerprint']}` |
| rows (train / validation / test) | {split_rows} |
| dropped while cleaning (empty / duplicate) | {stats['dropped_empty']} / {stats['dropped_duplicates']} |

## Test-split results ({report['rows']} rows)
| metric | value |
|---|---|
{metrics}

{report['headline']}: {report['confidence']:.0%} bootstrap interval [{low:.4f}, {high:.4f}].

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{classes}

## Training
{runtime:.0f} s, {speed:.1f} samples/s, {train.get('trainable_params', 0):,} trainable parameters
({train.get('frozen_params', 0):,} frozen).

## Intended use and limits
English, short texts like those of the training data. The test split is carved from the same
file as the training data, so these figures can be optimistic for text from elsewhere.
"""
