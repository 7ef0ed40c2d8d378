"""`train.precision`: what `auto` resolves to on a CPU, given its flags (injected), and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneship.errors import TuneshipError
from tuneship.train.hardware import cpu_bf16, cpu_flags
from tuneship.train.trainer import pick_precision

pytestmark = pytest.mark.unit

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
ICE_LAKE = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2_ONLY = frozenset({"avx2", "fma"})


def reader(flags: frozenset[str]):
    return lambda: flags


@pytest.mark.parametrize(("flags", "expected"), [
    (SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"), (ICE_LAKE, "fp32"), (AVX2_ONLY, "fp32"),
    (frozenset(), "fp32")])
def test_auto_is_bf16_only_on_a_cpu_with_bf16_instructions(flags, expected):
    assert pick_precision("auto", "cpu", reader(flags)) == expected


def test_explicit_bf16_runs_on_a_capable_cpu_and_fails_clearly_elsewhere():
    assert pick_precision("bf16", "cpu", reader(ZEN4)) == "bf16"
    with pytest.raises(TuneshipError, match="bf16 on a CPU needs AMX-BF16 or AVX512-BF16"):
        pick_precision("bf16", "cpu", reader(ICE_LAKE))
    with pytest.raises(TuneshipError, match="fp16 needs a GPU"):
        pick_precision("fp16", "cpu", reader(SAPPHIRE_RAPIDS))
    assert pick_precision("fp32", "cpu", reader(SAPPHIRE_RAPIDS)) == "fp32"


def test_amx_is_named_before_avx512_bf16():
    assert cpu_bf16(reader(SAPPHIRE_RAPIDS)) == "amx_bf16"
    assert cpu_bf16(reader(ZEN4)) == "avx512_bf16"
    assert cpu_bf16(reader(ICE_LAKE)) is None


def test_flags_are_read_from_the_first_processor(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_resolved_precision_is_a_run_param(tmp_path: Path):
    from tuneship.config import TrainConfig
    from tuneship.train.trainer import resolved, training_args

    args = training_args(TrainConfig(precision="fp32", device="cpu"), tmp_path, 0, report_to=[])
    assert resolved(args) == {"train.resolved_device": "cpu", "train.resolved_precision": "fp32"}
