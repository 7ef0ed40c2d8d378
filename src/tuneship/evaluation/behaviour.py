"""Behaviour tests of a classifier (CheckList: minimum functionality, invariance, directional),
generated from the templates of a suite file (`conf/behaviour/*.yaml`, `data.behaviour`).

Each suite's pass rate is reported as `behaviour_<suite>`, next to the test metrics, so the
model card shows it and `registry.gate.floors` can require it.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tuneship.errors import TuneshipError

Predict = Callable[[list[str]], np.ndarray]  # texts → probabilities (rows × labels)
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass
class Suite:
    name: str
    kind: str                     # mft | inv | dir
    cases: list[list[str]]        # mft: [text]; inv: [text, variant, ...]; dir: [text, changed]
    label: str | None = None      # mft: the expected label; dir: the label whose score must not fall
    failures: list[list[str]] = field(default_factory=list)


def load_suites(path: str | Path, label_names: list[str], seed: int = 0) -> list[Suite]:
    """The suites of a file, their cases generated (deterministic for a seed)."""
    path = Path(path)
    if not path.is_file():
        raise TuneshipError(f"behaviour suites file not found: {path} (data.behaviour)")
    spec = yaml.safe_load(path.read_text()) or {}
    lexicons, limit = spec.get("lexicons", {}), int(spec.get("max_cases", 50))
    rng = random.Random(seed)
    suites = []
    for raw in spec.get("suites", []):
        kind, name = raw.get("type"), raw.get("name")
        label = raw.get("label") or raw.get("towards")
        if kind not in ("mft", "inv", "dir") or not name:
            raise TuneshipError(f"{path}: each suite needs a name and type mft|inv|dir (got {raw})")
        if kind != "inv" and label not in label_names:
            raise TuneshipError(f"{path}: suite {name}: label {label!r} is not one of {label_names}")
        cases = _cases(raw, kind, lexicons, rng, limit, f"{path}: suite {name}")
        suites.append(Suite(name, kind, cases, label))
    return suites


def _cases(raw: dict, kind: str, lexicons: dict, rng: random.Random, limit: int,
           where: str) -> list[list[str]]:
    templates = raw.get("templates") or []
    changed = raw.get("changed") or []
    if kind == "dir" and len(changed) != len(templates):
        raise TuneshipError(f"{where}: `changed` needs one template per template")
    cases = []
    for i, template in enumerate(templates):
        for values in _fillings(template, lexicons, where):
            text = template.format(**values)
            if kind == "mft":
                cases.append([text])
            elif kind == "dir":
                cases.append([text, changed[i].format(**values)])
            else:
                cases.append([text, *_perturb(text, raw.get("perturb"), values, lexicons, rng,
                                              where)])
    rng.shuffle(cases)
    return cases[:limit]


def _fillings(template: str, lexicons: dict, where: str) -> list[dict[str, str]]:
    slots = sorted(set(_SLOT.findall(template)))
    missing = [s for s in slots if s not in lexicons]
    if missing:
        raise TuneshipError(f"{where}: no lexicon for slot(s) {missing}")
    return [dict(zip(slots, combo, strict=True))
            for combo in itertools.product(*(lexicons[s] for s in slots))]


def _perturb(text: str, how: str | None, values: dict, lexicons: dict, rng: random.Random,
             where: str) -> list[str]:
    """Variants of `text` that must get the same prediction."""
    if how == "names":
        if "name" not in values:
            raise TuneshipError(f"{where}: perturb=names needs a {{name}} slot")
        others = [n for n in lexicons["name"] if n != values["name"]]
        return [text.replace(values["name"], other) for other in rng.sample(others, 2)]
    if how == "typos":
        words = text.split()
        i = rng.choice([k for k, w in enumerate(words) if len(w) > 3])
        w = words[i]
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        return [" ".join(words)]
    if how == "punctuation":
        bare = text.rstrip(string.punctuation)
        return [bare + ".", bare + "!", bare + " ..."]
    raise TuneshipError(f"{where}: perturb must be names, typos or punctuation (got {how!r})")


def run_suites(suites: list[Suite], predict: Predict, label_names: list[str]) -> dict[str, dict]:
    """Pass rate and a few failing cases per suite."""
    results = {}
    for suite in suites:
        texts = [t for case in suite.cases for t in case]
        probs = predict(texts)
        passed, offset = [], 0
        for case in suite.cases:
            rows = probs[offset:offset + len(case)]
            offset += len(case)
            passed.append(_passes(suite, rows, label_names))
        suite.failures = [c for c, ok in zip(suite.cases, passed, strict=True) if not ok][:5]
        results[suite.name] = {"type": suite.kind, "cases": len(suite.cases),
                               "pass_rate": float(np.mean(passed)) if passed else float("nan"),
                               "failures": suite.failures}
    return results


def _passes(suite: Suite, rows: np.ndarray, label_names: list[str]) -> bool:
    if suite.kind == "mft":
        return int(rows[0].argmax()) == label_names.index(suite.label)
    if suite.kind == "inv":
        return len({int(r.argmax()) for r in rows}) == 1
    column = label_names.index(suite.label)
    return bool(rows[1, column] >= rows[0, column] - 1e-6)
