"""The jobs store (SQLite; PostgreSQL when TUNESHIP_TEST_POSTGRES_URI is set), the settings, and
the Hydra overrides a job's pipeline call gets."""

import os
import uuid

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tuneship.config import validate_all
from tuneship.errors import TuneshipError
from tuneship.jobs.config import load_settings
from tuneship.jobs.overrides import DATA, job_overrides
from tuneship.jobs.runner import ORDER, remaining_stages
from tuneship.jobs.store import File, Job, Store, new_id
from tuneship.workdir import WorkDir

pytestmark = pytest.mark.unit
POSTGRES = os.environ.get("TUNESHIP_TEST_POSTGRES_URI")


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "postgresql":
        if not POSTGRES:
            pytest.skip("PostgreSQL: set TUNESHIP_TEST_POSTGRES_URI (e.g. postgresql://u:p@host/db) "
                        "to run the store against it")
        from sqlalchemy import create_engine, text
        schema = f"jobs_{uuid.uuid4().hex[:8]}"
        with create_engine(POSTGRES).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}options=-csearch_path%3D{schema}"
    else:
        url = sqlite_url(tmp_path)
    s = Store(url)
    s.create_all()
    s.sync_keys([("alice", "a" * 64), ("bob", "b" * 64)])
    yield s
    s.dispose()
    if request.param == "postgresql":
        with create_engine(POSTGRES).begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def job(owner: str = "alice", **fields) -> Job:
    job_id = new_id("ftjob")
    return Job(id=job_id, owner_id=owner, model="tiny-llama-chat", task="causal_lm",
               training_file="file-x", status="queued", seed=1, hyperparameters={},
               registered_model=f"ft-{job_id}", **fields)


def test_keys_map_to_owners_and_only_configured_keys_stay(store):
    assert store.owner_of("a" * 64) == "alice"
    store.sync_keys([("alice", "c" * 64)])
    assert store.owner_of("a" * 64) is None
    assert store.owner_of("c" * 64) == "alice"


def test_status_changes_are_compare_and_set(store):
    row = job()
    assert store.add_job(row, max_waiting=5)
    assert store.claim(row.id).attempts == 1
    assert store.claim(row.id) is None                       # already running
    assert store.transition(row.id, ["running"], "cancelled")
    assert not store.transition(row.id, ["running"], "succeeded")  # the cancel won
    assert store.job(row.id).status == "cancelled"
    assert store.job(row.id).finished_at is not None


def test_owner_scoping_and_limits(store):
    assert store.add_job(job("alice"), max_waiting=2)
    assert store.add_job(job("alice"), max_waiting=2)
    assert not store.add_job(job("alice"), max_waiting=2)   # two waiting already
    assert store.add_job(job("bob"), max_waiting=2)
    alice = store.list_jobs("alice")
    assert len(alice) == 2 and store.job(alice[0].id, owner="bob") is None
    f = File(id=new_id("file"), owner_id="bob", filename="a", purpose="fine-tune", bytes=60,
             sha256="0" * 64, kind="chat", rows=10)
    assert store.add_file(f, max_stored_bytes=100)
    big = File(id=new_id("file"), owner_id="bob", filename="b", purpose="fine-tune", bytes=50,
               sha256="0" * 64, kind="chat", rows=10)
    assert not store.add_file(big, max_stored_bytes=100)
    assert store.get_file("alice", f.id) is None and store.get_file("bob", f.id).bytes == 60


def test_events_and_checkpoints_newest_first_one_per_step(store):
    row = job()
    store.add_job(row, max_waiting=5)
    store.add_event(row.id, "two")
    store.add_checkpoint(row.id, 2, "m:ckpt-step-2", {"step": 2.0})
    store.add_checkpoint(row.id, 2, "m:ckpt-step-2", {"step": 2.0})
    store.add_checkpoint(row.id, 4, "m:ckpt-step-4", {"step": 4.0})
    assert [e.message for e in store.events(row.id)][:2] == ["two", f"Created fine-tuning job: {row.id}"]
    assert [c.step for c in store.checkpoints(row.id)] == [4, 2]


def test_settings_load_with_overrides_and_name_bad_values(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESHIP_JOBS_DIR", str(tmp_path))
    monkeypatch.setenv("TUNESHIP_JOBS_API_KEY", "sk-test")
    settings = load_settings(None, ["executor.concurrency=2"])
    assert settings.database_url == f"sqlite:///{tmp_path}/jobs.db"
    assert settings.executor.concurrency == 2 and settings.keys[-1].owner == "default"
    assert {"smollm2-135m-instruct", "tiny-llama-chat", "tiny-bert-classifier"} <= set(settings.models)
    with pytest.raises(TuneshipError, match="executor.concurrency"):
        load_settings(None, ["executor.concurrency=0"])


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "all-minilm-l6-v2", "tiny-llama-chat",
                                   "tiny-bert-classifier"])
def test_every_allowed_model_composes_a_valid_pipeline_config(model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESHIP_JOBS_DIR", str(tmp_path))
    entry = load_settings().models[model]
    hyper = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}
    overrides = job_overrides(entry, job_id="ftjob-1", data_file=tmp_path / "d e.jsonl",
                              work_dir=tmp_path / "w", model_name="ft-x-1", seed=7, hyper=hyper,
                              base_lr=2e-3, stages=["train", "evaluate"])
    cfg = compose_config(overrides)
    validate_all(cfg)
    assert cfg.data.source == str(tmp_path / "d e.jsonl") and cfg.data.format == "jsonl"
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.batch_size) == (3, -1, 2)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert (cfg.seed, cfg.train.resume, list(cfg.stages)) == (7, "auto", ["train", "evaluate"])
    assert cfg.registry.model_name == "ft-x-1" and cfg.paths.work_dir == str(tmp_path / "w")
    assert cfg.task._target_.endswith("CausalLM" if entry.task == "causal_lm" else "Classification")
    assert all(o in overrides for o in DATA[entry.task])
    assert OmegaConf.select(cfg, "data.label_names") is None or entry.task == "causal_lm"


def test_a_resumed_job_runs_only_the_stages_it_has_not_finished(tmp_path):
    work = WorkDir(tmp_path)
    assert remaining_stages(work) == ORDER
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stats.json").write_text("{}")
    work.write(work.run_file, {"run_id": "r"})
    assert remaining_stages(work) == ORDER[1:]
    work.write(work.train_result, {})
    work.write(work.report, {})
    assert remaining_stages(work) == ["register", "promote"]
