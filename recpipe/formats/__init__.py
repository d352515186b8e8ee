"""File formats of the SageMaker built-in algorithms, in numpy.

- ``recordio``: recordio-protobuf (``write_sparse``, ``read_sparse``, ...); self-contained.
- ``mxnet``: MXNet NDArray list files (``load_params``, ``save_params``).
- ``fm_model``: the Factorization Machines ``model.tar.gz`` (``load_fm_model``, ``save_fm_model``).
- ``knn_output``: k-NN batch transform verbose jsonlines (orjson).

Importing this package is cheap: submodules (and numpy/scipy) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recpipe.formats.fm_model import fm_model_member_bytes, load_fm_model, save_fm_model
    from recpipe.formats.knn_output import read_verbose_jsonlines, write_verbose_jsonlines
    from recpipe.formats.mxnet import load_params, save_params
    from recpipe.formats.recordio import (
        RecordIOError,
        read_dense,
        read_dense_files,
        read_sparse,
        read_sparse_files,
        write_dense,
        write_sparse,
    )

_EXPORTS = {
    "RecordIOError": "recordio",
    "read_dense": "recordio",
    "read_dense_files": "recordio",
    "read_sparse": "recordio",
    "read_sparse_files": "recordio",
    "write_dense": "recordio",
    "write_sparse": "recordio",
    "load_params": "mxnet",
    "save_params": "mxnet",
    "load_fm_model": "fm_model",
    "save_fm_model": "fm_model",
    "fm_model_member_bytes": "fm_model",
    "read_verbose_jsonlines": "knn_output",
    "write_verbose_jsonlines": "knn_output",
}

__all__ = [
    "RecordIOError",
    "fm_model_member_bytes",
    "load_fm_model",
    "load_params",
    "read_dense",
    "read_dense_files",
    "read_sparse",
    "read_sparse_files",
    "read_verbose_jsonlines",
    "save_fm_model",
    "save_params",
    "write_dense",
    "write_sparse",
    "write_verbose_jsonlines",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recpipe.formats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"recpipe.formats.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
