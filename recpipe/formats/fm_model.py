"""The SageMaker built-in Factorization Machines artifact (``model.tar.gz``).

Layout: a gzip tarball holding ``model_algo-1`` (one ``model_algo-<host>`` per training host with
multi-host training; they are identical after the final sync, and algo-1 is the one read). That
member is an uncompressed zip of ``meta.json``, ``symbol.json`` and ``params`` (an MXNet
``nd.save`` list, see ``recpipe.formats.mxnet``); a member that is the raw ``params`` file is also
accepted. ``v`` and ``w1_weight`` may be stored ``row_sparse`` (MXNet's sparse FM recipe keeps them
so; rows never stored are zero): they are read as dense arrays like the rest.

Parameter naming:

- current artifacts: ``arg:v`` (n, k), ``arg:w1_weight`` (n, 1), ``arg:w0_weight`` (1,);
- older artifacts (FullyConnected layer): ``arg:v`` (k, n), ``arg:Linear_Plus_Bias_weight`` (1, n),
  ``arg:Linear_Plus_Bias_bias`` (1,).

``load_fm_model`` returns ``V`` (n, k) float32, ``w`` **(n,)** float32 (flattened: the model is
``b + x.w + sum_{i<j} <V_i, V_j> x_i x_j`` whatever the stored layout) and ``b`` as a float.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from recpipe.formats.exceptions import ModelArtifactError, MXNetFormatError
from recpipe.formats.mxnet import LIST_MAGIC, load_params, save_params

__all__ = ["fm_model_member_bytes", "load_fm_model", "save_fm_model"]

MEMBER = "model_algo-1"
_HOST_MEMBER = re.compile(r"^(?:\./)?model_algo-(\d+)$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _open_tar(source: str | os.PathLike[str] | IO[bytes]) -> tuple[tarfile.TarFile, str]:
    try:
        if isinstance(source, (str, os.PathLike)):
            return tarfile.open(Path(source), mode="r:*"), f"'{source}'"
        name = getattr(source, "name", None)
        return tarfile.open(fileobj=source, mode="r:*"), f"'{name}'" if isinstance(name, str) else "input"
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ModelArtifactError(f"FM model artifact {source!r} is not a readable tar(.gz) file: {e}") from e


def _member_bytes(source: str | os.PathLike[str] | IO[bytes]) -> tuple[bytes, str]:
    tar, name = _open_tar(source)
    with tar:
        try:
            members = [m for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ModelArtifactError(f"FM model artifact {name} is truncated or corrupt: {e}") from e
        hosts = {int(match.group(1)): m for m in members if (match := _HOST_MEMBER.match(m.name))}
        if 1 not in hosts:
            found = sorted(m.name for m in members)
            raise ModelArtifactError(
                f"FM model artifact {name} has no '{MEMBER}' member (found {found}); "
                "expected 'model_algo-1' (or model_algo-<host> per training host)."
            )
        member = hosts[1]
        try:
            f = tar.extractfile(member)
            assert f is not None
            data = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ModelArtifactError(f"FM model artifact {name}: cannot read '{member.name}': {e}") from e
    return data, f"{name}:{member.name}"


def _params_bytes(member: bytes, where: str) -> tuple[bytes, dict[str, Any] | None]:
    """The ``params`` file inside the member (a zip, or the raw params) and meta.json if any."""
    if len(member) >= 8 and int.from_bytes(member[:8], "little") == LIST_MAGIC:
        return member, None
    if not zipfile.is_zipfile(io.BytesIO(member)):
        raise ModelArtifactError(
            f"FM model member {where} is neither a zip (meta.json, symbol.json, params) nor an MXNet "
            f"params file (starts with {member[:8].hex()})."
        )
    try:
        with zipfile.ZipFile(io.BytesIO(member)) as z:
            names = z.namelist()
            if "params" not in names:
                raise ModelArtifactError(f"FM model member {where} has no 'params' entry (found {names}).")
            params = z.read("params")
            meta = json.loads(z.read("meta.json")) if "meta.json" in names else None
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError) as e:
        raise ModelArtifactError(f"FM model member {where} is a corrupt zip: {e}") from e
    return params, meta


def _strip(key: str) -> str:
    return key[4:] if key.startswith("arg:") else key


def fm_arrays(params: dict[str, np.ndarray], where: str = "params") -> tuple[np.ndarray, np.ndarray, float]:
    """(V (n, k), w (n,), b) from the arrays of an FM ``params`` file (either naming)."""
    arrays = {_strip(k): v for k, v in params.items() if not k.startswith("aux:")}
    if "v" not in arrays:
        raise ModelArtifactError(f"FM {where} has no 'arg:v' array (found {sorted(params)}).")
    v = arrays["v"]
    if "w1_weight" in arrays or "w0_weight" in arrays:
        w_key, b_key, v_transposed = "w1_weight", "w0_weight", False
    elif "Linear_Plus_Bias_weight" in arrays or "Linear_Plus_Bias_bias" in arrays:
        w_key, b_key, v_transposed = "Linear_Plus_Bias_weight", "Linear_Plus_Bias_bias", True
    else:
        raise ModelArtifactError(
            f"FM {where} has neither 'arg:w1_weight'/'arg:w0_weight' nor 'arg:Linear_Plus_Bias_weight'/"
            f"'arg:Linear_Plus_Bias_bias' (found {sorted(params)})."
        )
    for key in (w_key, b_key):
        if key not in arrays:
            raise ModelArtifactError(f"FM {where} has no 'arg:{key}' array (found {sorted(params)}).")
    w, b = arrays[w_key], arrays[b_key]
    if w.ndim not in (1, 2) or (w.ndim == 2 and 1 not in w.shape):
        raise ModelArtifactError(
            f"FM {where}: 'arg:{w_key}' must be a vector or (n, 1)/(1, n), got {w.shape}."
        )
    n = w.size
    if b.size != 1:
        raise ModelArtifactError(f"FM {where}: 'arg:{b_key}' must hold one value, got shape {b.shape}.")
    if v.ndim != 2:
        raise ModelArtifactError(f"FM {where}: 'arg:v' must be 2-dimensional, got shape {v.shape}.")
    if v_transposed and v.shape[1] == n:
        v = v.T  # FullyConnected-era artifacts store V as (k, n)
    if v.shape[0] != n:
        raise ModelArtifactError(
            f"FM {where}: 'arg:v' has shape {arrays['v'].shape} but 'arg:{w_key}' has {n} features."
        )
    return (
        np.ascontiguousarray(v, dtype=np.float32),
        np.ascontiguousarray(w.reshape(n), dtype=np.float32),
        float(b.reshape(-1)[0]),
    )


def load_fm_model(
    source: str | os.PathLike[str] | IO[bytes],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read ``(V (n, k) float32, w (n,) float32, b)`` from a FM ``model.tar.gz`` (path or file).

    Raises ``ModelArtifactError`` (bad tarball, members or arrays) or ``MXNetFormatError`` (bad
    params bytes).
    """
    member, where = _member_bytes(source)
    params_bytes, _ = _params_bytes(member, where)
    try:
        params = load_params(params_bytes)
    except MXNetFormatError as e:
        raise MXNetFormatError(f"{where}/params: {e}") from e
    return fm_arrays(params, where)


def load_fm_meta(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any] | None:
    """meta.json of the ``model_algo-1`` member (None for a raw params member)."""
    member, where = _member_bytes(source)
    return _params_bytes(member, where)[1]


def _check(v: Any, w: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.asarray(v, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    if v.ndim != 2:
        raise ModelArtifactError(f"V must be (n_features, n_factors), got shape {v.shape}.")
    n = v.shape[0]
    if w.size != n or (w.ndim == 2 and w.shape != (n, 1)) or w.ndim > 2:
        raise ModelArtifactError(f"w must have shape ({n},) or ({n}, 1) to match V {v.shape}, got {w.shape}.")
    b_arr = np.asarray(b, dtype=np.float32).reshape(-1)
    if b_arr.size != 1:
        raise ModelArtifactError(f"b must be a single number, got shape {np.shape(b)}.")
    return v, w.reshape(n, 1), b_arr


def _symbol_json(n: int, k: int, predictor_type: str) -> bytes:
    output = "LogisticRegressionOutput" if predictor_type == "binary_classifier" else "LinearRegressionOutput"
    nodes: list[dict[str, Any]] = [
        {"op": "null", "name": "data", "attrs": {"__storage_type__": "2"}, "inputs": []},
        {"op": "null", "name": "w1_weight", "attrs": {"__shape__": f"({n}, 1)"}, "inputs": []},
        {"op": "dot", "name": "dot0", "inputs": [[0, 0, 0], [1, 0, 0]]},
        {"op": "null", "name": "w0_weight", "attrs": {"__shape__": "(1,)"}, "inputs": []},
        {"op": "broadcast_add", "name": "broadcast_add0", "inputs": [[2, 0, 0], [3, 0, 0]]},
        {"op": "null", "name": "v", "attrs": {"__shape__": f"({n}, {k})"}, "inputs": []},
        {"op": "dot", "name": "dot1", "inputs": [[0, 0, 0], [5, 0, 0]]},
        {"op": "square", "name": "square0", "inputs": [[6, 0, 0]]},
        {"op": "square", "name": "square1", "inputs": [[0, 0, 0]]},
        {"op": "square", "name": "square2", "inputs": [[5, 0, 0]]},
        {"op": "dot", "name": "dot2", "inputs": [[8, 0, 0], [9, 0, 0]]},
        {"op": "elemwise_sub", "name": "_minus0", "inputs": [[7, 0, 0], [10, 0, 0]]},
        {"op": "sum", "name": "sum0", "attrs": {"axis": "1", "keepdims": "True"}, "inputs": [[11, 0, 0]]},
        {"op": "_mul_scalar", "name": "_mulscalar0", "attrs": {"scalar": "0.5"}, "inputs": [[12, 0, 0]]},
        {"op": "elemwise_add", "name": "_plus0", "inputs": [[4, 0, 0], [13, 0, 0]]},
        {"op": "null", "name": "out_label", "inputs": []},
        {"op": output, "name": "out", "inputs": [[14, 0, 0], [15, 0, 0]]},
    ]
    symbol = {
        "nodes": nodes,
        "arg_nodes": [0, 1, 3, 5, 15],
        "node_row_ptr": list(range(len(nodes) + 1)),
        "heads": [[16, 0, 0]],
        "attrs": {"mxnet_version": ["int", 10901]},
    }
    return json.dumps(symbol, indent=2).encode()


def fm_model_member_bytes(v: Any, w: Any, b: Any, *, meta: dict[str, Any] | None = None) -> bytes:
    """The ``model_algo-1`` zip (meta.json, symbol.json, params) for V (n, k), w (n,)|(n, 1), b.

    ``meta`` is the whole meta.json document; by default
    ``{"training_parameters": {"feature_dim": n, "num_factors": k, "predictor_type": "regressor"},
    "version": 1, "epoch_number": 1}`` (values as strings, like the service writes them).
    """
    v_arr, w_arr, b_arr = _check(v, w, b)
    n, k = v_arr.shape
    if meta is None:
        meta = {
            "training_parameters": {
                "feature_dim": str(n),
                "num_factors": str(k),
                "predictor_type": "regressor",
            },
            "version": 1,
            "epoch_number": 1,
        }
    predictor = str(meta.get("training_parameters", {}).get("predictor_type", "regressor"))
    params = save_params({"arg:v": v_arr, "arg:w1_weight": w_arr, "arg:w0_weight": b_arr})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in (
            ("meta.json", json.dumps(meta).encode()),
            ("symbol.json", _symbol_json(n, k, predictor)),
            ("params", params),
        ):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def save_fm_model(
    target: str | os.PathLike[str] | IO[bytes],
    v: Any,
    w: Any,
    b: Any,
    *,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a ``model.tar.gz`` holding ``model_algo-1`` (see ``fm_model_member_bytes``).

    The output is deterministic (fixed timestamps), so equal models give equal bytes.
    """
    member = fm_model_member_bytes(v, w, b, meta=meta)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(MEMBER)
        info.size = len(member)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(member))
    data = gzip.compress(raw.getvalue(), mtime=0)
    if isinstance(target, (str, os.PathLike)):
        Path(target).write_bytes(data)
    else:
        target.write(data)
