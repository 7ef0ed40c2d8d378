"""Which checkpoint the train stage resumes from."""

import pytest

from tuneship.errors import TuneshipError
from tuneship.train.resume import checkpoint_to_resume, finish

pytestmark = pytest.mark.unit
SIG = {"data": "abc", "train": {"lr": 0.1}}


def fake_checkpoint(ckpt_dir, step):
    path = ckpt_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return path


def test_fresh_start_records_the_signature(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert checkpoint_to_resume("auto", ckpt, SIG) is None
    assert (ckpt / "tuneship-signature.json").is_file()


def test_auto_resumes_the_last_checkpoint_of_the_same_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint_to_resume("auto", ckpt, SIG)
    fake_checkpoint(ckpt, 4)
    last = fake_checkpoint(ckpt, 8)
    assert checkpoint_to_resume("auto", ckpt, SIG) == str(last)


def test_changed_config_or_never_starts_over(tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint_to_resume("auto", ckpt, SIG)
    fake_checkpoint(ckpt, 4)
    assert checkpoint_to_resume("auto", ckpt, {**SIG, "data": "other"}) is None
    assert not (ckpt / "checkpoint-4").exists()
    fake_checkpoint(ckpt, 4)
    assert checkpoint_to_resume("never", ckpt, SIG) is None


def test_explicit_path_and_finish(tmp_path):
    ckpt = tmp_path / "ckpt"
    path = fake_checkpoint(ckpt, 2)
    assert checkpoint_to_resume(str(path), ckpt, SIG) == str(path)
    with pytest.raises(TuneshipError, match="no such checkpoint"):
        checkpoint_to_resume(str(tmp_path / "nope"), ckpt, SIG)
    finish(ckpt)
    assert not ckpt.exists()
