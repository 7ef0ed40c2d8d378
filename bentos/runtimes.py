"""The runtimes a classifier can serve with, and the choice among them made where it runs.

The optimize stage records candidate runtimes of a registered version in its run under
`runtimes/`: `manifest.json` (each candidate's kind, dtype, file and parity against eager fp32,
the reference) and `<name>/model.onnx` for ONNX ones. `make bento` copies that folder into the
imported BentoML model. At start the classifier loads the reference and every parity-passed
runtime it can run here, times each on the same batches (one text, and a typical batch) and
serves the fastest, unless config pins one (`ServeArgs.runtime`, TUNESHIP_RUNTIME).

Every runtime maps padded `input_ids` and `attention_mask` (int64 arrays, one forward pass) to
float32 logits, so the classifier plans its passes (packing.py) the same way for all of them.
Only numpy at import time; torch and onnxruntime are imported by the runtimes that need them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

AUTO = "auto"
KINDS = ("torch", "onnx")
# Review-like sentences of everyday lengths: the batches every runtime is timed on at start.
SAMPLE_TEXTS = [
    "a gripping, beautifully acted film", "a dull and lifeless mess",
    "the plot is thin but the jokes land more often than not",
    "I would not watch it again", "an instant classic that earns every minute",
    "two hours I will never get back", "the cast is wonderful and the script is sharp",
    "it drags badly in the middle and never recovers",
    "a quiet, moving portrait of a family coming apart",
    "loud, long and curiously empty", "funny, warm and smarter than it looks",
    "the director seems to have lost interest halfway through",
    "one of the best performances of the year", "flat dialogue and a muddled story",
    "a charming little movie that knows exactly what it wants to be",
    "neither scary nor funny, just tedious",
]
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TYPICAL_BATCH = 16
ROUNDS = 5          # interleaved rounds: every runtime sees the same machine load
WARMUP_CALLS = 2


class Runtime(Protocol):
    """One way to run the classifier's forward pass."""

    name: str

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


@dataclass
class TorchRuntime:
    """An eager transformers model (fp32, a cast or dynamically quantized copy) on the
    service's device."""

    name: str
    model: Any
    device: str

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                             attention_mask=torch.from_numpy(attention_mask).to(self.device))
        return out.logits.float().cpu().numpy()


@dataclass
class OnnxRuntime:
    """An ONNX file run by onnxruntime's CPUExecutionProvider."""

    name: str
    session: Any
    inputs: frozenset[str] = field(default_factory=frozenset)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:  # one sentence per text: segment 0 throughout
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)


@dataclass(frozen=True)
class Candidate:
    """A runtime the manifest records (kind torch: a dtype of the eager model; onnx: a file)."""

    name: str
    kind: str
    dtype: str
    file: str | None = None
    passed: bool = False
    reason: str | None = None
    parity: dict = field(default_factory=dict)


def eager_name(dtype: str) -> str:
    """The eager model's runtime name for the dtype it is stored in: `torch-fp32`, ..."""
    return f"torch-{DTYPE_NAMES.get(dtype, dtype)}"


def read_manifest(folder: Path) -> dict | None:
    """`<folder>/manifest.json`, or None when the model carries no runtimes."""
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def candidates(manifest: dict) -> list[Candidate]:
    """The manifest's runtimes (ValueError naming the entry when one is malformed)."""
    found = []
    for i, entry in enumerate(manifest.get("runtimes", [])):
        try:
            found.append(Candidate(
                name=str(entry["name"]), kind=str(entry["kind"]), dtype=str(entry["dtype"]),
                file=entry.get("file"), passed=bool(entry.get("passed")),
                reason=entry.get("reason"), parity=dict(entry.get("parity") or {})))
        except (KeyError, TypeError) as err:
            raise ValueError(f"runtimes[{i}] lacks {err} (needs name, kind, dtype)") from None
    return found


def why_unusable(candidate: Candidate, folder: Path, device: str | None = None) -> str | None:
    """Why this service cannot serve a candidate (None: it can; `device` None: not checked)."""
    if not candidate.passed:
        return f"failed parity: {candidate.reason or 'no reason recorded'}"
    if candidate.kind not in KINDS:
        return f"kind {candidate.kind!r} is not one this service runs ({', '.join(KINDS)})"
    if candidate.kind == "torch" and candidate.dtype == "int8" and device not in (None, "cpu"):
        return "torch int8 (dynamic quantization) runs on the CPU only"
    if candidate.kind == "onnx":
        if not candidate.file or not (folder / candidate.file).is_file():
            return f"file {candidate.file!r} is missing from the model's runtimes/"
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed in this environment"
    return None


def load(candidate: Candidate, folder: Path, reference: TorchRuntime, threads: int) -> Runtime:
    """The runtime a usable candidate names (torch kinds cast a copy of the reference)."""
    if candidate.kind == "torch":
        import torch

        model = copy.deepcopy(reference.model)
        if candidate.dtype == "int8":  # as the optimize stage built it: int8 Linear weights
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                           dtype=torch.qint8)
        else:
            model = model.to(getattr(torch, candidate.dtype))
        return TorchRuntime(candidate.name, model.eval(), reference.device)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the same rule as torch's (runtime.torch_threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / candidate.file), options,
                                   providers=["CPUExecutionProvider"])
    return OnnxRuntime(candidate.name, session,
                       frozenset(i.name for i in session.get_inputs()))


@dataclass
class Choice:
    """The runtime served, how it was chosen, and what else was considered."""

    runtime: Runtime
    chosen_by: str                                  # "config", "timing" or "only"
    reference: str
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        """What `GET /model` shows under "runtime"."""
        reasons = {"config": "pinned by config (runtime / TUNESHIP_RUNTIME)",
                   "only": "the only runtime available here",
                   "timing": "fastest here: least geometric-mean time over the timed batches"}
        return {"name": self.runtime.name, "chosen_by": self.chosen_by,
                "reason": reasons[self.chosen_by], "reference": self.reference,
                "timings_ms": self.timings_ms, "speedup": speedups(self.timings_ms,
                                                                   self.reference),
                "parity": self.parity, "unavailable": self.unavailable}


def speedups(timings: dict[str, dict[str, float]], reference: str) -> dict[str, float]:
    """Each runtime's geometric-mean speed-up over the reference across the timed batches."""
    base = timings.get(reference)
    if not base:
        return {}
    return {name: round(math.exp(statistics.fmean(
        math.log(base[k] / ms[k]) for k in base)), 3) for name, ms in timings.items()}


def time_runtimes(runtimes: Sequence[Runtime], batches: dict[str, list[str]],
                  run: Callable[[Runtime, list[str]], object],
                  rounds: int = ROUNDS) -> dict[str, dict[str, float]]:
    """Median milliseconds of `run(runtime, texts)` per runtime and batch.

    Rounds are interleaved (every runtime, then the next round), so a busy spell on a shared
    machine falls on all of them rather than on one.
    """
    for runtime in runtimes:
        for texts in batches.values():
            for _ in range(WARMUP_CALLS):
                run(runtime, texts)
    samples: dict[str, dict[str, list[float]]] = {r.name: {k: [] for k in batches}
                                                  for r in runtimes}
    for _ in range(rounds):
        for runtime in runtimes:
            for key, texts in batches.items():
                start = time.perf_counter()
                run(runtime, texts)
                samples[runtime.name][key].append((time.perf_counter() - start) * 1000)
    return {name: {k: round(statistics.median(v), 3) for k, v in by.items()}
            for name, by in samples.items()}


def fastest(timings: dict[str, dict[str, float]]) -> str:
    """The runtime of least geometric-mean time over the batches (no batch size dominates)."""
    return min(timings, key=lambda name: sum(math.log(ms) for ms in timings[name].values()))


def sample_batches(texts: Sequence[str] = SAMPLE_TEXTS,
                   typical: int = TYPICAL_BATCH) -> dict[str, list[str]]:
    """One text, and a typical batch of distinct texts."""
    return {"batch_1": [texts[0]], f"batch_{typical}": list(texts[:typical])}


@dataclass
class Survey:
    """What a model's runtimes/ offers on this host: usable candidates and why others are not."""

    reference: str
    usable: list[Candidate]
    unavailable: dict[str, str]
    parity: dict[str, dict]

    @property
    def names(self) -> list[str]:
        return [self.reference, *(c.name for c in self.usable)]

    def check(self, requested: str) -> None:
        """Raise RuntimeError when `requested` is neither auto nor usable here, naming why."""
        if requested in (AUTO, *self.names):
            return
        why = self.unavailable.get(requested, "not among the model's recorded runtimes")
        raise RuntimeError(f"runtime {requested!r} (bento argument runtime / TUNESHIP_RUNTIME) "
                           f"cannot be served: {why}; available here: "
                           f"{', '.join(self.names)} (or auto)")


def survey(reference: str, folder: Path, device: str | None = None) -> Survey:
    """The manifest's candidates (besides the reference) sorted into usable and not."""
    found = [c for c in candidates(read_manifest(folder) or {}) if c.name != reference]
    unavailable = {c.name: why for c in found if (why := why_unusable(c, folder, device))}
    return Survey(reference, [c for c in found if c.name not in unavailable], unavailable,
                  {c.name: c.parity for c in found})


def choose(reference: TorchRuntime, folder: Path, requested: str,
           run: Callable[[Runtime, list[str]], object], threads: int) -> Choice:
    """Load the runtime to serve: `requested` if it is usable here, else (auto) the fastest.

    Raises RuntimeError when a pinned runtime is not usable (unknown, failed parity, missing
    file or package), naming the ones that are.
    """
    found = survey(reference.name, folder, reference.device)
    found.check(requested)
    keep = {"reference": reference.name, "unavailable": found.unavailable,
            "parity": found.parity}
    if requested == reference.name:
        return Choice(reference, "config", **keep)
    if requested != AUTO:
        pinned = next(c for c in found.usable if c.name == requested)
        return Choice(load(pinned, folder, reference, threads), "config", **keep)
    if not found.usable:
        return Choice(reference, "only", **keep)
    loaded = [reference, *(load(c, folder, reference, threads) for c in found.usable)]
    timings = time_runtimes(loaded, sample_batches(), run)
    best = fastest(timings)
    return Choice(next(r for r in loaded if r.name == best), "timing", timings_ms=timings,
                  **keep)
