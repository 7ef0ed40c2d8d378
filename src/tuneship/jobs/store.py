"""The durable store: owners and their API keys, files, jobs, events and checkpoints (SQLAlchemy 2).

Any SQLAlchemy URL works: SQLite by default (WAL, a busy timeout, and `BEGIN IMMEDIATE` for
writes, so the API, the worker and the job processes can share one file), PostgreSQL for a team.
Each method is one short transaction and returns detached rows. Job status changes are
compare-and-set (`transition`), so a cancel and a worker never both win.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

ACTIVE = ("validating_files", "queued", "running")
WAITING = ("validating_files", "queued")
FINAL = ("succeeded", "failed", "cancelled")


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "owners"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)


class File(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # chat | prompt_completion | classification
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    training_file: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_param: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the job process (group leader)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    registered_model: Mapped[str] = mapped_column(String(255))  # the MLflow name it registers as
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Event(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[int] = mapped_column(Integer, default=now)


def _engine(url: str, immediate: bool) -> Engine:
    """An engine; for SQLite: WAL, busy timeout, and our own BEGIN (IMMEDIATE for writers)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions start with the BEGIN below
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Store:
    """All reads and writes of the jobs service. Owner scoping is the caller's argument."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._write_engine = _engine(url, immediate=True)
        self._read_engine = _engine(url, immediate=False)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)

    def create_all(self) -> None:
        Base.metadata.create_all(self._write_engine)

    def dispose(self) -> None:
        self._write_engine.dispose()
        self._read_engine.dispose()

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    # --- owners and keys ---------------------------------------------------------------------

    def sync_keys(self, keys: Iterable[tuple[str, str]]) -> None:
        """Make the (owner, sha256) pairs from the settings the only valid keys."""
        pairs = dict((digest, owner) for owner, digest in keys)
        with self.write() as s:
            for owner in set(pairs.values()):
                if s.get(Owner, owner) is None:
                    s.add(Owner(id=owner))
            for row in s.scalars(select(ApiKey)):
                if row.sha256 not in pairs:
                    s.delete(row)
            s.flush()
            for digest, owner in pairs.items():
                s.merge(ApiKey(sha256=digest, owner_id=owner))

    def owner_of(self, key_sha256: str) -> str | None:
        with self.read() as s:
            row = s.get(ApiKey, key_sha256)
            return row.owner_id if row else None

    # --- files -------------------------------------------------------------------------------

    def add_file(self, row: File, max_stored_bytes: int) -> bool:
        """Insert the file unless the owner's stored bytes would pass `max_stored_bytes`."""
        with self.write() as s:
            stored = s.scalar(select(func.coalesce(func.sum(File.bytes), 0))
                              .where(File.owner_id == row.owner_id))
            if stored + row.bytes > max_stored_bytes:
                return False
            s.add(row)
            return True

    def get_file(self, owner: str, file_id: str) -> File | None:
        with self.read() as s:
            return s.scalar(select(File).where(File.id == file_id, File.owner_id == owner))

    def list_files(self, owner: str, purpose: str | None = None) -> list[File]:
        with self.read() as s:
            query = select(File).where(File.owner_id == owner).order_by(File.seq)
            if purpose:
                query = query.where(File.purpose == purpose)
            return list(s.scalars(query))

    def delete_file(self, owner: str, file_id: str) -> File | None:
        with self.write() as s:
            row = s.scalar(select(File).where(File.id == file_id, File.owner_id == owner))
            if row is not None:
                s.delete(row)
            return row

    def jobs_using(self, file_id: str) -> list[Job]:
        with self.read() as s:
            return list(s.scalars(select(Job).where(Job.training_file == file_id,
                                                    Job.status.in_(ACTIVE))))

    # --- jobs --------------------------------------------------------------------------------

    def add_job(self, row: Job, max_waiting: int) -> bool:
        """Insert the job unless the owner already has `max_waiting` validating or queued."""
        with self.write() as s:
            waiting = s.scalar(select(func.count()).select_from(Job).where(
                Job.owner_id == row.owner_id, Job.status.in_(WAITING)))
            if waiting >= max_waiting:
                return False
            s.add(row)
            s.add(Event(id=new_id("ftevent"), job_id=row.id, message=f"Created fine-tuning job: {row.id}"))
            return True

    def job(self, job_id: str, owner: str | None = None) -> Job | None:
        with self.read() as s:
            query = select(Job).where(Job.id == job_id)
            if owner is not None:
                query = query.where(Job.owner_id == owner)
            return s.scalar(query)

    def list_jobs(self, owner: str) -> list[Job]:
        """Newest first."""
        with self.read() as s:
            return list(s.scalars(select(Job).where(Job.owner_id == owner).order_by(Job.seq.desc())))

    def jobs_page(self, owner: str, after: str | None, limit: int) -> tuple[list[Job], bool] | None:
        """Newest first, the `limit` jobs after job `after`, and whether more follow; paged in
        SQL, so a page costs the same however many jobs the owner has. None: no such `after`."""
        with self.read() as s:
            query = select(Job).where(Job.owner_id == owner)
            if after:
                seq = s.scalar(select(Job.seq).where(Job.id == after, Job.owner_id == owner))
                if seq is None:
                    return None
                query = query.where(Job.seq < seq)
            rows = list(s.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)))
            return rows[:limit], len(rows) > limit

    def jobs_in(self, statuses: Iterable[str]) -> list[Job]:
        """Oldest first (the queue's order)."""
        with self.read() as s:
            return list(s.scalars(select(Job).where(Job.status.in_(tuple(statuses)))
                                  .order_by(Job.seq)))

    def transition(self, job_id: str, allowed: Iterable[str], status: str, **fields: Any) -> bool:
        """Set `status` (and `fields`) only if the job is in one of `allowed`; True if it was."""
        values = {"status": status, **fields}
        if status in FINAL:
            values.setdefault("finished_at", now())
        with self.write() as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(tuple(allowed)))
                             .values(**values))
            return done.rowcount == 1

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.write() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**fields))

    def claim(self, job_id: str) -> Job | None:
        """queued → running for one more attempt; None if the job is not queued."""
        with self.write() as s:
            row = s.scalar(select(Job).where(Job.id == job_id, Job.status == "queued"))
            if row is None:
                return None
            row.status, row.attempts = "running", row.attempts + 1
            row.started_at = row.started_at or now()
            return row

    # --- events and checkpoints --------------------------------------------------------------

    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        with self.write() as s:
            s.add(Event(id=new_id("ftevent"), job_id=job_id, message=message, level=level,
                        type=type, data=data))

    def events(self, job_id: str) -> list[Event]:
        """Newest first."""
        with self.read() as s:
            return list(s.scalars(select(Event).where(Event.job_id == job_id)
                                  .order_by(Event.seq.desc())))

    def add_checkpoint(self, job_id: str, step: int, name: str, metrics: dict) -> None:
        """One checkpoint object per step (a resumed run may save a step again)."""
        with self.write() as s:
            if s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job_id,
                                                    Checkpoint.step == step)):
                return
            s.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=step, name=name,
                             metrics=metrics))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Newest first."""
        with self.read() as s:
            return list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                  .order_by(Checkpoint.seq.desc())))
