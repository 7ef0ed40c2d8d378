"""`make bento`: import the champion into the BentoML store, then build the bento in `bentos/`.

The bento's Python requirements are the names in `bentos/bentofile.yaml`, pinned here to the
versions installed in this venv (the pyproject pins), CPU torch included; the bento arguments
carry the model tag and the limits from `conf/serve/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bentoml
import yaml
from omegaconf import DictConfig

from tuneship.config import RegistryConfig, section
from tuneship.errors import TuneshipError
from tuneship.serving.config import DockerConfig, ServeConfig
from tuneship.serving.model_store import import_adapters, import_champion
from tuneship.settings import project_root

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Import `models:/<serve.model_name>@<serve.alias>` and build a bento serving it."""
    reg = section(cfg, "registry", RegistryConfig)
    serve = section(cfg, "serve", ServeConfig)  # type: ignore[type-var]
    model = import_champion(reg, serve)
    task = model.info.metadata.get("task", "text-classification")
    served, args, extra = model, {}, {}
    if "adapter" in model.info.metadata.get("transformers", {}):
        llm = import_adapters(reg, serve, model)  # the bento serves the base + its adapters
        served = llm.base
        args = {"llm_adapters": {k: str(m.tag) for k, m in llm.adapters.items()},
                "llm_aliases": llm.aliases, "llm_registry_uri": followable(reg.tracking_uri)}
        extra = {"adapters": sorted(llm.adapters), "aliases": llm.aliases,
                 "skipped": llm.skipped}
    packages = runtime_packages(served.info.metadata)
    if packages:
        extra["runtimes"] = served.info.metadata["runtimes"]["passed"]
    bento = build(serve, str(served.tag), task=task, args=args,
                  models=[str(served.tag), *args.get("llm_adapters", {}).values()],
                  packages=packages)
    return {"model": str(served.tag), "task": task, **extra, "bento": str(bento.tag),
            "path": bento.path, "labels": model.info.labels,
            "serve": f"bentoml serve {bento.tag} --host {serve.host} --port {serve.port}"}


def followable(uri: str) -> str | None:
    """The tracking URI the LLM service may follow, when it carries no credentials (a secret
    never goes into bento arguments; MLFLOW_TRACKING_URI at serve time covers the rest)."""
    parsed = urlsplit(uri)
    if parsed.password or parsed.username or parsed.scheme not in ("http", "https", "sqlite",
                                                                    "file", ""):
        return None
    return uri


# What the image needs beyond torch to run a runtime kind (bentos/runtimes.py): onnxruntime is
# PyPI's CPU build (no CUDA wheels), whatever the bento's torch.
RUNTIME_PACKAGES = {"torch": [], "onnx": ["onnxruntime"]}


def runtime_packages(metadata: dict) -> list[str]:
    """The packages the model's parity-passed runtimes need (none without runtimes)."""
    candidates = metadata.get("runtimes", {}).get("candidates", {})
    kinds = {c["kind"] for c in candidates.values()}
    return sorted({p for kind in kinds for p in RUNTIME_PACKAGES.get(kind, [])})


# The service each task's bento runs (modules of bentos/).
SERVICES = {"text-classification": "service:Tuneship", "text-generation": "generation:TuneshipLM"}


def build(serve: ServeConfig, model_tag: str, task: str = "text-classification",
          bentos_dir: Path | None = None, args: dict[str, Any] | None = None,
          models: list[str] | None = None, packages: list[str] | None = None) -> bentoml.Bento:
    """Build `bentos/` with pinned requirements and the serving limits as bento arguments
    (plus `args`); `models` are stored in the bento beside the one the service declares, and
    `packages` (names) are required beside the bentofile's.

    The build runs on a temporary copy of `bentos/`, so the merged bentofile (and a bundled
    wheel, which BentoML wants inside the build context) never touch the checkout.
    """
    bentos_dir = bentos_dir or project_root() / "bentos"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "bentos"
        shutil.copytree(bentos_dir, ctx, ignore=shutil.ignore_patterns("__pycache__"))
        spec = bentofile(ctx / "bentofile.yaml", serve.docker, ctx, packages or [])
        spec["service"] = SERVICES[task]
        if models:
            spec["models"] = sorted(set(models))
        spec.setdefault("labels", {})["task"] = task
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        with contextlib.chdir(ctx):  # BentoML only reads wheels below the working directory
            bento = bentoml.bentos.build_bentofile(
                str(ctx / "bentofile.yaml"), build_ctx=str(ctx), name=serve.bento_name.lower(),
                labels={"model": model_tag},
                args=serve.bento_args(model_tag) | (args or {}))
    log.info("built bento %s serving %s", bento.tag, model_tag)
    return bento


def bentofile(path: Path, docker: DockerConfig, ctx: Path,
              extra: list[str] | None = None) -> dict[str, Any]:
    """The bentofile with its packages (and `extra` ones) pinned and the configured docker
    overrides applied."""
    spec = yaml.safe_load(path.read_text())
    python = spec.setdefault("python", {})
    names = [*python.get("packages", []), *(n for n in extra or [] if n not in
                                             python.get("packages", []))]
    packages = [pin(name) for name in names]
    if docker.torch_wheel:
        wheel = Path(docker.torch_wheel).resolve()
        if not wheel.is_file():
            raise TuneshipError(f"serve.docker.torch_wheel: {wheel} does not exist")
        _place(wheel, ctx / "wheels" / wheel.name)
        # The wheel is a line of requirements.txt, so it is resolved together with what needs
        # torch (peft, accelerate); BentoML installs `python.wheels` only after requirements.txt,
        # by which time uv would have pulled PyPI's CUDA torch for them.
        packages = [f"./wheels/{wheel.name}" if p.startswith("torch==") else p
                    for p in packages]
        python["wheels"] = [*python.get("wheels", []), f"wheels/{wheel.name}"]
        python.pop("extra_index_url", None)  # the bundled wheel replaces the CPU index
    if docker.cuda_version:  # PyPI's Linux torch is the CUDA build: drop the CPU index and label
        packages = [p.split("+")[0] if p.startswith("torch==") else p for p in packages]
        python.pop("extra_index_url", None)
        spec.setdefault("docker", {})["cuda_version"] = docker.cuda_version
    python["packages"] = packages
    if docker.base_image:
        spec.setdefault("docker", {})["base_image"] = docker.base_image
    return spec


def _place(source: Path, target: Path) -> None:
    """Hard-link (else copy) a file into the build context (BentoML resolves symlinks)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def pin(name: str) -> str:
    """`name==<installed version>` (a name that already carries a specifier is kept as is)."""
    if any(op in name for op in "=<>~@ "):
        return name
    try:
        return f"{name}=={version(name)}"  # torch keeps its +cpu label: the CPU index has it
    except PackageNotFoundError:
        raise TuneshipError(f"bentofile package '{name}' is not installed here: cannot pin "
                            f"it (run make setup)") from None
