"""Read a raw dataset with HF `datasets`: a local CSV/TSV/JSON(L)/Parquet/text file or a hub id."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets

from tuneship.errors import TuneshipError

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet",
             "txt": "text", "text": "text"}


def infer_format(source: str, fmt: str | None) -> str:
    """The file format from the config or the file suffix."""
    if fmt:
        return fmt
    suffix = Path(source).suffix.lstrip(".").lower()
    if suffix not in _BUILDERS:
        raise TuneshipError(
            f"cannot tell the format of '{source}' from its suffix; set data.format to one of "
            f"{sorted(set(_BUILDERS))}"
        )
    return suffix


def _builder_kwargs(fmt: str) -> dict:
    if fmt == "tsv":  # GLUE-style TSV: tab-separated, no quoting at all
        return {"sep": "\t", "quoting": csv.QUOTE_NONE}
    return {}


def looks_like_path(source: str) -> bool:
    """A hub id is `name` or `owner/name`; anything with a file suffix or a leading / is a path."""
    return source.startswith((".", "/", "~")) or bool(Path(source).suffix)


def load_raw(source: str, fmt: str | None, cache_dir: str | None) -> datasets.Dataset:
    """Load every row of `source` as one `datasets.Dataset`; errors name the file and the cause."""
    if not looks_like_path(source):
        return _load_hub(source, cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise TuneshipError(f"data file not found: {path} (set data.source or TUNESHIP_DATA_DIR)")
    fmt = infer_format(str(path), fmt)
    try:
        loaded = datasets.load_dataset(
            _BUILDERS[fmt], data_files={"train": str(path)}, split="train",
            cache_dir=cache_dir, **_builder_kwargs(fmt),
        )
    except Exception as err:  # parsers raise many types; the cause is what the user needs
        cause = err.__cause__ or err
        if isinstance(cause, UnicodeDecodeError):
            raise TuneshipError(f"{path} is not valid UTF-8 (byte {cause.start}): re-encode it "
                                "as UTF-8") from None
        raise TuneshipError(f"could not read {path} as {fmt}: {type(cause).__name__}: {cause}") from None
    if len(loaded) == 0:
        raise TuneshipError(f"{path} holds no rows")
    return loaded


def _load_hub(name: str, cache_dir: str | None) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, split="train", cache_dir=cache_dir)
    except Exception as err:
        raise TuneshipError(
            f"could not load '{name}' from the hub ({type(err).__name__}: {err}); hub access is "
            "off unless TUNESHIP_ONLINE=1, or point data.source to a local file"
        ) from None
