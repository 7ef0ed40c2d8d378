"""The evaluate stage: the task scores `<work_dir>/model` on the test split; the report goes to
`<work_dir>/eval/report.json` and, with the task's other reports, to the pipeline's run."""

from __future__ import annotations

import mlflow

from tuneship.context import StageContext
from tuneship.errors import TuneshipError


def run(ctx: StageContext) -> dict:
    """Score the trained model on the test split; log metrics, interval and reports."""
    prepared = ctx.work.load_prepared()
    ctx.work.eval.mkdir(parents=True, exist_ok=True)
    report = ctx.task.evaluate(ctx, prepared)
    headline = ctx.eval.headline
    if headline not in report["metrics"]:
        raise TuneshipError(f"eval.headline={headline} is not among the computed metrics "
                            f"{sorted(report['metrics'])}")
    report = {**report, "headline": headline, "confidence": ctx.eval.confidence,
              "data_fingerprint": prepared.stats["fingerprint"]}
    ctx.work.write(ctx.work.report, report)
    with ctx.stage_run("evaluate"):
        mlflow.log_metrics(ctx.task.logged_metrics(report))
        low, high = report["interval"]
        mlflow.log_metrics({f"test_{headline}_ci_low": low, f"test_{headline}_ci_high": high})
        mlflow.log_artifacts(str(ctx.work.eval), artifact_path="eval")
    return report
