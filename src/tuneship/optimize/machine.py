"""The CPU the runtimes were built and scored on: its model name and the flags that decide
which kernels are fast (int8 dot products, bf16, AMX tiles)."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
         "amx_tile")
VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # 8-bit dot products without overflow
CPUINFO = Path("/proc/cpuinfo")


def machine(cpuinfo: Path = CPUINFO) -> dict:
    """`{"cpu_model": ..., "flags": [...]}`: the model name and which of FLAGS the CPU has."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return {"cpu_model": None, "flags": []}
    model = next((ln.partition(":")[2].strip() for ln in lines if ln.startswith("model name")), None)
    present = set(next((ln for ln in lines if ln.startswith("flags")), "").partition(":")[2].split())
    return {"cpu_model": model, "flags": [flag for flag in FLAGS if flag in present]}


def has_vnni(flags: list[str]) -> bool:
    """Whether int8 matrix products can use the full 8-bit range (else onnxruntime's 7-bit
    `reduce_range` avoids saturating the AVX2 instructions' 16-bit intermediate sums)."""
    return bool(VNNI & set(flags))
