"""`gguf:<package>/<file>.gguf` model sources: a GGUF file shipped in an installed package,
converted once into a plain safetensors folder under `<cache_dir>/models/`.

Loading a GGUF file dequantizes every tensor (slow: once per machine), and a model
loaded that way refuses `save_pretrained`. So the first use builds a fresh model from the config
(without `quantization_config`), copies the dequantized fp32 weights in and saves it with the
tokenizer; later loads read plain safetensors. The tokenizer alone can be converted first, for tests
that only need the vocabulary. Conversions are serialised by a file lock and published with an
atomic rename, so parallel processes never see a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from filelock import FileLock

from tuneship.errors import TuneshipError
from tuneship.packages import package_file

log = logging.getLogger(__name__)
PREFIX = "gguf:"
RECORD_FILE = "tuneship-gguf.json"
Part = Literal["model", "tokenizer"]


def is_gguf(spec: str | None) -> bool:
    """Whether `spec` names a GGUF source (`gguf:<package>/<file>.gguf` or `gguf:/abs/x.gguf`)."""
    return bool(spec) and spec.startswith(PREFIX)


def gguf_file(spec: str) -> Path:
    """The GGUF file a `gguf:` spec points to (inside an installed package, or a plain path)."""
    rest = spec[len(PREFIX):]
    path = Path(rest) if rest.startswith(("/", ".", "~")) else Path(package_file(f"pkg:{rest}"))
    path = path.expanduser()
    if not path.is_file() or path.suffix != ".gguf":
        raise TuneshipError(f"'{spec}' does not point to a .gguf file ({path})")
    return path


def resolve(spec: str, cache_dir: str | Path, part: Part = "model") -> Path:
    """A folder `from_pretrained` can load for `spec`, converting the GGUF file on first use.

    `part="model"` gives config + safetensors + tokenizer; `part="tokenizer"` may give a
    tokenizer-only folder (cheaper) when the full conversion has not happened yet.
    """
    source = gguf_file(spec)
    root = Path(cache_dir) / "models" / source.stem
    model_dir, tok_dir = root / "model", root / "tokenizer"
    stamp = _stamp(source)
    if _fresh(model_dir, stamp) or (part == "tokenizer" and _fresh(tok_dir, stamp)):
        return model_dir if _fresh(model_dir, stamp) else tok_dir
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock"), timeout=1800):
        target = model_dir if part == "model" else tok_dir
        if _fresh(model_dir, stamp):
            return model_dir
        if not _fresh(target, stamp):
            _publish(target, lambda out: _convert(source, out, part), stamp)
    return target


def _stamp(source: Path) -> dict:
    stat = source.stat()
    return {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _fresh(folder: Path, stamp: dict) -> bool:
    """The folder exists and was converted from this very file (same size and mtime)."""
    record = folder / RECORD_FILE
    if not record.is_file():
        return False
    saved = json.loads(record.read_text())
    return all(saved.get(k) == v for k, v in stamp.items())


def _publish(target: Path, build, stamp: dict) -> None:
    """Build into a temporary sibling folder, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        extra = build(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps({**stamp, **extra}, indent=2))
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _convert(source: Path, out: Path, part: Part) -> dict:
    """Write the tokenizer (and, for `model`, the fp32 weights) of `source` into `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s (%s) into %s", source.name, part, out)
    folder, name = str(source.parent), source.name
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    if part == "tokenizer":
        return {"seconds": round(time.perf_counter() - start, 1)}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # gguf raises many types on unsupported files
        raise TuneshipError(f"cannot load {source} as a causal LM: {err}") from None
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    weights = sha256_files(out)
    log.info("converted %s in %.0f s", source.name, time.perf_counter() - start)
    return {"seconds": round(time.perf_counter() - start, 1), "weights_sha256": weights}


def sha256_files(folder: Path, pattern: str = "*.safetensors") -> str:
    """SHA-256 over the weight files of a model folder (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise TuneshipError(f"no {pattern} weight files in {folder}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(folder: Path) -> str | None:
    """The weights' SHA-256 written at conversion time, if `folder` is a converted GGUF model."""
    record = Path(folder) / RECORD_FILE
    return json.loads(record.read_text()).get("weights_sha256") if record.is_file() else None
