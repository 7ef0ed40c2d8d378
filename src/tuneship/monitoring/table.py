"""The inference table read back: a time window of served requests, with feedback joined.

The service writes `<dir>/requests/date=YYYY-MM-DD/*.parquet` and `<dir>/feedback/...`
(bentos/inference_log.py); day partitions let a window read only the files of its days.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tuneship.errors import TuneshipError


def _dataset(directory: Path, table: str) -> ds.Dataset | None:
    root = directory / table
    if not any(root.glob("date=*/*.parquet")):
        return None
    return ds.dataset(root, format="parquet", partitioning="hive")


def read_window(directory: Path, start: dt.datetime, end: dt.datetime,
                endpoint: str | None = None) -> pd.DataFrame:
    """Requests answered with status 2xx in [start, end), optionally of one endpoint."""
    data = _dataset(directory, "requests")
    if data is None:
        raise TuneshipError(f"no inference table at {directory}/requests: is the service "
                            f"recording (inference log directory set)?")
    days = [(start.date() + dt.timedelta(days=i)).isoformat()
            for i in range((end.date() - start.date()).days + 1)]
    where = (pc.field("date").cast("string").isin(days) & (pc.field("time") >= start)
             & (pc.field("time") < end) & (pc.field("status") >= 200) & (pc.field("status") < 300))
    if endpoint:
        where &= pc.field("endpoint") == endpoint
    return data.to_table(filter=where).to_pandas()


def feedback(directory: Path) -> pd.DataFrame:
    """Every feedback record; the latest one per request id wins."""
    data = _dataset(directory, "feedback")
    if data is None:
        return pd.DataFrame(columns=["request_id", "label", "rating", "feedback_time"])
    frame = data.to_table(columns=["request_id", "label", "rating", "time"]).to_pandas()
    frame = frame.sort_values("time").drop_duplicates("request_id", keep="last")
    return frame.rename(columns={"time": "feedback_time"})


def texts(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per classified text, oldest first: request_id, time, model version, text and
    predicted label (requests stored without text, in stats-only mode, have none)."""
    rows = requests[requests["input"].notna() & requests["labels"].notna()].sort_values("time")
    exploded = rows[["request_id", "time", "model_version", "input", "labels"]].explode(
        ["input", "labels"])
    return exploded.rename(columns={"input": "text", "labels": "prediction"}).dropna(
        subset=["text"]).reset_index(drop=True)


def with_feedback(classified: pd.DataFrame, directory: Path) -> pd.DataFrame:
    """`texts(...)` with the feedback label and rating of its request (NaN where none)."""
    return classified.merge(feedback(directory), on="request_id", how="left")
