"""`gguf:` sources: converted once, published atomically, one converter at a time."""

import threading
import time

import pytest

from tuneship import gguf
from tuneship.errors import TuneshipError

pytestmark = pytest.mark.unit


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A stand-in .gguf file and a slow fake converter that counts its calls."""
    source = tmp_path / "pkg" / "tiny.gguf"
    source.parent.mkdir()
    source.write_bytes(b"GGUF")
    calls = []

    def convert(src, out, part):
        calls.append(part)
        time.sleep(0.3)  # long enough for a second process to arrive meanwhile
        (out / "config.json").write_text("{}")
        return {"weights_sha256": "abc"} if part == "model" else {}

    monkeypatch.setattr(gguf, "_convert", convert)
    return {"spec": f"gguf:{source}", "source": source, "cache": tmp_path / "cache",
            "calls": calls}


def test_parallel_first_uses_convert_once(fake):
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        gguf.resolve(fake["spec"], fake["cache"]))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake["calls"] == ["model"]
    assert len(set(results)) == 1 and (results[0] / "config.json").is_file()
    assert gguf.recorded_sha256(results[0]) == "abc"
    assert not [p for p in results[0].parent.iterdir() if p.name.startswith(".model")]


def test_tokenizer_only_then_model_and_a_changed_file(fake):
    tok = gguf.resolve(fake["spec"], fake["cache"], part="tokenizer")
    assert tok.name == "tokenizer" and fake["calls"] == ["tokenizer"]
    model = gguf.resolve(fake["spec"], fake["cache"])
    assert model.name == "model" and fake["calls"] == ["tokenizer", "model"]
    assert gguf.resolve(fake["spec"], fake["cache"], part="tokenizer") == model  # the full one
    fake["source"].write_bytes(b"GGUF v2")  # a new package version: convert again
    gguf.resolve(fake["spec"], fake["cache"])
    assert fake["calls"] == ["tokenizer", "model", "model"]


def test_a_failed_conversion_leaves_nothing(fake, monkeypatch):
    def broken(src, out, part):
        (out / "half.bin").write_text("x")
        raise TuneshipError("cannot load")

    monkeypatch.setattr(gguf, "_convert", broken)
    with pytest.raises(TuneshipError, match="cannot load"):
        gguf.resolve(fake["spec"], fake["cache"])
    root = fake["cache"] / "models" / "tiny"
    assert sorted(p.name for p in root.iterdir()) == [".lock"]


def test_bad_specs(tmp_path):
    with pytest.raises(TuneshipError, match="not installed"):
        gguf.resolve("gguf:no_such_pkg_xyz/model.gguf", tmp_path)
    (tmp_path / "x.bin").write_text("")
    with pytest.raises(TuneshipError, match="does not point to a .gguf file"):
        gguf.resolve(f"gguf:{tmp_path / 'x.bin'}", tmp_path)
