"""What every benchmark writes besides its printed table: benchmarks/results/<name>.json with the
machine it ran on, when, the command, and the table's rows (benchmarks/readme_figures.py turns
them into the README's figure blocks).

    {"benchmark": ..., "date": ..., "machine": {...}, "command": ..., "rows": [...], ...extra}

`rows` is a list of dicts keyed by column title (the README table's header, in order);
`extra` adds fields at the top level, e.g. "formats" ({column: "{:.1f}"}), "note" (a caption
line), "notes" (lines printed under the table), "tables" ({name: rows}) or raw figures.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _cpu_flags() -> list[str]:
    """The FLAGS the kernel reports for this CPU (the first `flags` line of /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return [flag for flag in FLAGS if flag in present]


def _torch() -> tuple[str | None, str | None]:
    """torch's version and the name of GPU 0 (None without CUDA or torch)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    try:
        import torch
    except ImportError:
        return version, None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return version, gpu


def machine() -> dict:
    """The CPU facts of this run (lscpu, /proc/cpuinfo), torch's version and the GPU, if any."""
    info = _lscpu()
    torch_version, gpu = _torch()
    cores = info.get("CPU(s)")
    return {
        "cpu_model": info.get("Model name") or platform.processor() or None,
        "vendor": info.get("Vendor ID"),
        "cpu_family": info.get("CPU family"),
        "cores": int(cores) if cores and cores.isdigit() else os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "flags": _cpu_flags(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch": torch_version,
        "gpu": gpu,
        "python": platform.python_version(),
    }


def command() -> str:
    """The command line that ran this benchmark, script path relative to the checkout, less
    `--note` (stored on its own)."""
    script = Path(sys.argv[0]).resolve()
    with_root = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    args, rest = [], iter(sys.argv[1:])
    for arg in rest:
        if arg == "--note":
            next(rest, None)
        elif not arg.startswith("--note="):
            args.append(arg)
    return shlex.join(["python", str(with_root), *args])


def default_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def add_args(parser: argparse.ArgumentParser, name: str, help_text: str = "") -> None:
    """`--json PATH` (default benchmarks/results/<name>.json) and `--note TEXT` (a caption)."""
    parser.add_argument("--json", type=Path, default=default_path(name),
                        help=f"{help_text or 'also write the figures as JSON here'} "
                             f"(default: benchmarks/results/{name}.json)")
    parser.add_argument("--note", default="",
                        help="a caption stored with the figures and shown under the README "
                             "table (e.g. what else ran on the machine)")


def write(name: str, table_rows: list[dict], extra: dict | None = None,
          path: Path | None = None) -> Path:
    """Write benchmarks/results/<name>.json (or `path`) and return where it went."""
    path = Path(path) if path else default_path(name)
    record = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command(),
        "rows": table_rows,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path
