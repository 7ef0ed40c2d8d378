"""What the load benchmarks share: a free loopback port, a process tree's memory, stopping a
server started in its own session, their common options and latency percentiles."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident memory of a process and all its descendants in bytes, and how many there are
    ((0, 0) once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total, len(procs)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started in its own session), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def add_server_args(parser: argparse.ArgumentParser, *, model: str, concurrency: list[int],
                    duration: float) -> None:
    """The options every load benchmark takes: which bento, how many clients, for how long."""
    parser.add_argument("--model", default=model,
                        help="registered model name = bento name (make bento experiment=...)")
    parser.add_argument("--bento", help="bento tag (default: <model>:latest)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    parser.add_argument("--duration", type=float, default=duration, help="seconds per level")
    parser.add_argument("--ready-timeout", type=float, default=180.0)


def percentile(latencies_ms: list[float], q: int) -> float:
    """The q-th percentile (inclusive); the only value of a single sample, nan of none."""
    if len(latencies_ms) < 2:
        return latencies_ms[0] if latencies_ms else float("nan")
    return statistics.quantiles(latencies_ms, n=100, method="inclusive")[q - 1]
