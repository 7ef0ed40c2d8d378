"""Text classification: a sequence classifier with a fresh head, scored by accuracy and macro
precision/recall/F1 (scikit-learn), served as a `text-classification` pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from tuneship import metrics
from tuneship.data.columns import column
from tuneship.errors import TuneshipError
from tuneship.evaluation import behaviour, bootstrap, report
from tuneship.registry.lineage import pinned
from tuneship.settings import pick_device
from tuneship.tasks.base import Built, Logged, RuntimeSuite, Task
from tuneship.tasks.classification import data, model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tuneship.config import OptimizeConfig
    from tuneship.context import StageContext
    from tuneship.workdir import Prepared

INPUT_EXAMPLE = ["a gripping, beautifully acted film", "a dull and lifeless mess"]


class Classification(Task):
    name = "classification"
    mlflow_task = "text-classification"

    def tokenizer(self, ctx: StageContext):
        return model.load_tokenizer(ctx.model)

    def prepare(self, ctx: StageContext, tokenizer) -> Prepared:
        return data.prepare(ctx.data, tokenizer, ctx.seed, cache_dir=str(ctx.cache_dir / "datasets"))

    def data_metrics(self, stats: dict) -> dict[str, float]:
        flat = {f"data.rows_{k}": v for k, v in stats["rows"].items()}
        keys = ("rows_raw", "dropped_empty", "dropped_duplicates", "tokens_mean", "tokens_p95",
                "truncated_rows")
        return flat | {f"data.{k}": float(stats[k]) for k in keys}

    def logged_inputs(self, prepared: Prepared) -> dict[str, pd.DataFrame]:
        return {split: prepared.splits[split].select_columns(["text", "label"]).to_pandas()
                for split in ("train", "test")}

    def build_model(self, ctx: StageContext, prepared: Prepared, tokenizer) -> Built:
        built = model.build_classifier(ctx.model, prepared.stats["label_names"], len(tokenizer))
        frozen = model.freeze_embeddings(built) if ctx.train.freeze_embeddings else 0
        frozen += model.freeze_bottom_layers(built, ctx.train.freeze_layers)
        return Built(built, metrics={"frozen_params": frozen})

    def trainer_kwargs(self, ctx: StageContext, prepared: Prepared, tokenizer) -> dict[str, Any]:
        average = ctx.eval.average

        def compute(eval_pred) -> dict[str, float]:
            logits, labels = eval_pred
            return metrics.classification_scores(labels, np.argmax(logits, axis=-1),
                                                 average=average)

        # Sorted by length: evaluation batches then pad little (order does not change scores).
        return {"eval_dataset": prepared.splits["validation"].sort("length"),
                "data_collator": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
                "compute_metrics": compute}

    def evaluate(self, ctx: StageContext, prepared: Prepared) -> dict:
        """Test-split metrics, bootstrap interval, per-class CSV, confusion PNG, worst mistakes."""
        model_dir, ev, out = ctx.work.model, ctx.eval, ctx.work.eval
        if not (model_dir / "config.json").is_file():
            raise TuneshipError(f"no trained model in {model_dir}: run the train stage first")
        test, names = prepared.splits["test"], prepared.stats["label_names"]
        classifier = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        probs = predict_proba(classifier, tokenizer, test, ev.batch_size)
        refs, preds = np.asarray(column(test, "label")), probs.argmax(axis=1)
        scores = metrics.classification_scores(refs, preds, ev.metrics, ev.average)
        if ctx.data.behaviour:
            suites = behaviour.load_suites(ctx.data.behaviour, names, ctx.seed)
            results = behaviour.run_suites(
                suites, lambda texts: predict_texts(classifier, tokenizer, texts, ev.batch_size),
                names)
            ctx.work.write(out / "behaviour.json", results)
            scores |= {f"behaviour_{name}": r["pass_rate"] for name, r in results.items()}
        low, high = bootstrap.interval(
            lambda idx: metrics.score(ev.headline, refs[idx], preds[idx], ev.average),
            len(refs), ev.bootstrap_samples, ev.confidence, ctx.seed)
        texts = column(test, "text")
        ece, bins = report.calibration(refs, probs, ev.calibration_bins)
        scores["calibration_ece"] = ece
        bins.to_csv(out / "calibration.csv", index=False)
        report.reliability_png(bins, ece, out / "reliability_diagram.png")
        slices = self._slices(ev, texts, refs, preds)
        slices.to_csv(out / "slices.csv")
        scores |= {f"slice_{name}_{k}": row[k] for name, row in slices.iterrows()
                   for k in ("accuracy", "f1") if row["rows"]}
        classes = report.per_class(refs, preds, names)
        classes.to_csv(out / "per_class.csv")
        report.confusion_png(refs, preds, names, out / "confusion_matrix.png")
        report.worst_mistakes(texts, refs, probs, names, ev.worst_examples).to_csv(
            out / "worst_mistakes.csv", index=False)
        return {"metrics": scores, "interval": [low, high], "rows": int(len(refs)),
                "per_class": classes.round(4).to_dict(orient="index")}

    @staticmethod
    def _slices(ev, texts: list[str], refs: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
        """Rows, accuracy and macro F1 of each configured slice of the test split."""
        rows = {}
        for name, rule in ev.slices.items():
            keep = report.slice_mask(texts, rule)
            rows[name] = {"rows": int(keep.sum()), **(metrics.classification_scores(
                refs[keep], preds[keep], ["accuracy", "f1"], ev.average) if keep.any()
                else {"accuracy": float("nan"), "f1": float("nan")})}
        return pd.DataFrame.from_dict(rows, orient="index", columns=["rows", "accuracy", "f1"])

    def log_model(self, ctx: StageContext, prepared: Prepared, lineage: dict[str, str],
                  report: dict, train: dict) -> Logged:
        stats = prepared.stats
        pipe = transformers.pipeline("text-classification", model=str(ctx.work.model))
        info = mlflow.transformers.log_model(
            transformers_model=pipe, name="model", task=self.mlflow_task,
            input_example=INPUT_EXAMPLE,  # MLflow infers the signature from it
            pip_requirements=pinned(),  # without them MLflow's inference imports torchvision
            registered_model_name=ctx.registry.model_name,
            metadata={"label_names": stats["label_names"], **lineage})
        return Logged(info, card=_card(stats, report, train))

    def rescore(self, ctx: StageContext, version: ModelVersion, metric: str) -> float:
        """Score a registered version on this test split through its pyfunc."""
        prepared = ctx.work.load_prepared()
        test, names = prepared.splits["test"], prepared.stats["label_names"]
        loaded = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
        predicted = loaded.predict(column(test, "text"))["label"].tolist()
        unknown = set(predicted) - set(names)
        if unknown:
            raise TuneshipError(f"champion v{version.version} predicts labels {sorted(unknown)} "
                                f"that this dataset does not have: the two cannot be compared")
        preds = np.array([names.index(p) for p in predicted])
        return metrics.score(metric, np.asarray(column(test, "label")), preds, ctx.eval.average)

    def runtime_suite(self, ctx: StageContext, version: ModelVersion,
                      cfg: OptimizeConfig) -> RuntimeSuite:
        """ONNX Runtime fp32/int8 and torch bf16/int8 runtimes of `version` (runtimes.py)."""
        from tuneship.tasks.classification import runtimes  # onnx, onnxruntime: only here

        return runtimes.suite(ctx, version, cfg)


@torch.inference_mode()
def predict_proba(classifier, tokenizer, split, batch_size: int) -> np.ndarray:
    """Class probabilities, shape (rows, labels), in the split's order (batches sorted by
    length so each pads little)."""
    device = pick_device("auto")
    classifier.to(device).eval()
    features = split.select_columns(["input_ids", "attention_mask"])
    order = np.argsort(column(split, "length"), kind="stable")
    loader = DataLoader(features.select(order), batch_size=batch_size,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    probs = [torch.softmax(classifier(**{k: v.to(device) for k, v in batch.items()}).logits
                           .float(), dim=-1).cpu() for batch in loader]
    out = np.empty((len(split), classifier.config.num_labels), dtype=np.float32)
    out[order] = torch.cat(probs).numpy()
    return out


@torch.inference_mode()
def predict_texts(classifier, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    """Class probabilities of raw texts (rows × labels), in order."""
    device = next(classifier.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=512, return_tensors="pt").to(device)
        out.append(torch.softmax(classifier(**batch).logits.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def _card(stats: dict, report: dict, train: dict) -> str:
    """The classification sections of the model card."""
    classes = "\n".join(
        f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} "
        f"| {int(row['support'])} |" for label, row in report["per_class"].items())
    return f"""A text classifier. Labels: {', '.join(stats['label_names'])}.
Dropped while cleaning (empty / duplicate): {stats['dropped_empty']} / {stats['dropped_duplicates']}.

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{classes}

Training: {train.get('trainable_params', 0):,} trainable parameters ({train.get('frozen_params', 0):,}
frozen). The test split is carved from the same file as the training data, so these figures can
be optimistic for text from elsewhere."""
