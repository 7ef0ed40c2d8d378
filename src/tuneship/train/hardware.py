"""What the CPU can do fast: its bf16 instruction sets, read from the kernel's CPU flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

AMX_BF16 = "amx_bf16"
AVX512_BF16 = "avx512_bf16"
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo (empty where the file is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


FlagReader = Callable[[], frozenset[str]]


def cpu_bf16(flags: FlagReader = cpu_flags) -> str | None:
    """The CPU's bf16 matrix unit: `amx_bf16`, else `avx512_bf16`, else None."""
    present = flags()
    return next((f for f in (AMX_BF16, AVX512_BF16) if f in present), None)
