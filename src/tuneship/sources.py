"""Model sources in config: `pkg:<module>/<dir>` (a folder inside an installed package),
`gguf:<module>/<file>.gguf` (converted once into safetensors, see `tuneship.gguf`), or a local
path / hub id, which `from_pretrained` takes as it is."""

from __future__ import annotations

import os
from pathlib import Path

from tuneship import gguf
from tuneship.packages import package_file
from tuneship.settings import project_root


def resolve_model_path(spec: str | None, cache_dir: str | Path | None = None,
                       part: gguf.Part = "model") -> str | None:
    """A folder (or hub id) `from_pretrained` loads for `spec`.

    A `gguf:` source is converted under `<cache_dir>/models/` (default: TUNESHIP_CACHE or
    `<checkout>/.cache`); `part="tokenizer"` may convert only the tokenizer (cheaper).
    """
    if gguf.is_gguf(spec):
        cache = cache_dir or os.environ.get("TUNESHIP_CACHE") or project_root() / ".cache"
        return str(gguf.resolve(spec, cache, part))
    if spec and spec.startswith("pkg:"):
        return package_file(spec)
    return spec
