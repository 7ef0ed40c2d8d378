"""A short soak (benchmarks/soak.py) against the session's served smoke bento: no 5xx, nothing lost,
memory flat. The full run (120 s) is `benchmarks/soak.py --start`; see its docstring."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARMUP_S = 60  # a fresh service's allocators fill during its first minute at c=64 (soak.py)
DURATION_S = 30
BASELINE_AT_S = 5  # growth is measured from here to the end of the measured run


def test_short_soak_has_no_server_errors_no_lost_requests_and_flat_memory(served, tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--url", served.open.url,
         "--pid", str(served.open.proc.pid), "--duration", str(DURATION_S), "--warmup", str(WARMUP_S),
         "--baseline-at", str(BASELINE_AT_S), "--concurrency", "64", "--json", str(out)],
        capture_output=True, text=True, timeout=WARMUP_S + DURATION_S + 120)
    print(done.stdout)
    result = json.loads(out.read_text())
    assert result["answered"] > 0, done.stdout + done.stderr[-2000:]
    assert result["server_errors"] == 0, result
    assert result["lost"] == 0, result
    assert set(result["by_status"]) == {"200"}, result
    assert result["rss_growth_pct"] is not None and result["rss_growth_pct"] < 10, result
    assert done.returncode == 0, done.stdout
    assert httpx.get(f"{served.open.url}/readyz", timeout=10).status_code == 200
