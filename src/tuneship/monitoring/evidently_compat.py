"""Import Evidently beside pandas 3.

Evidently 0.7.23 (the newest release) imports `pandas.core.dtypes.common.infer_dtype_from_object`
at module level; pandas 3 removed that private helper, so `import evidently` fails with an
ImportError although pip accepts the pair (Evidently declares `pandas>=1.3.5`). The helper is
restored here, with pandas 2's meaning (the scalar type of a dtype), before Evidently is
imported. Evidently calls it only in a data-integrity test this project does not use.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def _infer_dtype_from_object(dtype: Any) -> type:
    from pandas.api.types import pandas_dtype

    return pandas_dtype(dtype).type


def evidently() -> ModuleType:
    """The `evidently` package, imported with the pandas 3 helper in place."""
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = _infer_dtype_from_object  # type: ignore[attr-defined]
    import evidently as package

    return package
