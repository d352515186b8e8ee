"""Local stand-in for the SageMaker built-in k-nearest-neighbours algorithm: training and batch transform.

Training (:func:`run_training_job`) follows the container contract (``docs/CONTRACTS.md``): string
hyperparameters in ``OPT_ML/input/config/hyperparameters.json``, the ``train`` channel of dense
recordio-protobuf float32 vectors whose labels are what inference returns (here: item indices), and
the three model files the service writes into ``OPT_ML/model/``:

- ``model_algo-1``: the faiss index (``faiss.write_index``);
- ``model_algo-1.labels``: the labels of the indexed vectors, raw little-endian float32 (the
  "np.float32 binary format" of the AWS docs: ``np.fromfile(path, dtype="<f4")`` reads it back);
- ``model_algo-1.json``: what inference needs (the hyperparameters, resolved, plus the index shape).

Hyperparameters are the service's: ``feature_dim``, ``k`` (<= 1024), ``predictor_type``
(classifier|regressor), ``sample_size`` (all required); ``index_type`` (faiss.Flat|faiss.IVFFlat|
faiss.IVFPQ, default faiss.Flat), ``index_metric`` (L2|INNER_PRODUCT|COSINE, default L2; IVFPQ takes
only L2), ``faiss_index_ivf_nlists`` (default ``auto`` = sqrt(sample_size)), ``faiss_index_pq_m``,
``mini_batch_size`` (accepted, not needed locally). ``dimension_reduction_type`` is refused: the
local stand-in does not implement the random projections. When the channel holds more vectors than
``sample_size``, ``sample_size`` of them are drawn without replacement (seeded, so reruns agree).

Indexes: ``faiss.Flat`` is ``IndexFlatIP`` (INNER_PRODUCT, and COSINE on unit-normalised vectors) or
``IndexFlatL2``; ``faiss.IVFFlat`` an ``IndexIVFFlat`` over such a flat quantizer; ``faiss.IVFPQ``
an ``IndexIVFPQ`` (vectors zero-padded to a multiple of ``faiss_index_pq_m``, as the service does).
The service does not expose faiss's ``nprobe``; locally IVF indexes are searched with
``nprobe = max(1, nlists // 8)`` (recorded in the JSON file).

Batch transform (:func:`run_transform`) reads ``application/x-recordio-protobuf`` query vectors and
writes ``<input name>.out`` per input file, one record per input record in input order. With
``accept="application/jsonlines; verbose=true"`` each line is
``{"predicted_label": p, "labels": [...], "distances": [...]}`` with the distances sorted from
smallest to largest, as the service documents: for INNER_PRODUCT and COSINE the "distances" are the
similarities faiss returns, so the best match comes LAST; for L2 they are faiss's squared L2
distances, best first. ``predicted_label`` is, for a classifier, the most frequent label among the k
neighbours (ties: the label whose nearest occurrence is nearer), for a regressor their mean. Slots
with no neighbour (k > number of indexed vectors) carry label ``-1`` and faiss's sentinel distance
(the float32 extreme). Those lines are written by
:func:`recpipe.formats.knn_output.write_verbose_jsonlines`, the project's one writer of the format.
Plain ``application/jsonlines`` writes ``{"predicted_label": p}`` lines;
``application/json`` (optionally ``; verbose=true``) one ``{"predictions": [...]}`` document per file.

Flat inner-product searches (INNER_PRODUCT, COSINE) use :func:`recpipe.algorithms.topk.topk_inner_product`,
an exact blocked kernel that returns the same neighbours as ``IndexFlatIP`` (up to ties) faster;
every other index is searched by faiss itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from recpipe.algorithms.container import NJobs, OnEpoch, read_hyperparameters, training_job
from recpipe.algorithms.exceptions import ClientError, DataError, HyperparameterError
from recpipe.formats.media_types import RECORDIO_PROTOBUF as RECORDIO

__all__ = [
    "INDEX_METRICS",
    "INDEX_TYPES",
    "MAX_K",
    "KnnHyperparameters",
    "KnnModel",
    "parse_hyperparameters",
    "run_training_job",
    "run_transform",
]

MAX_K = 1024
INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
INDEX_METRICS = ("L2", "INNER_PRODUCT", "COSINE")
PREDICTOR_TYPES = ("classifier", "regressor")
PQ_M_VALUES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
MODEL_NAME = "model_algo-1"
SAMPLE_SEED = 0
FORMAT_VERSION = 1

_REQUIRED = ("feature_dim", "k", "predictor_type", "sample_size")
_KNOWN = {
    *_REQUIRED,
    "index_type",
    "index_metric",
    "faiss_index_ivf_nlists",
    "faiss_index_pq_m",
    "mini_batch_size",
    "dimension_reduction_type",
    "dimension_reduction_target",
}
_F32_MAX = float(np.finfo(np.float32).max)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


# --- hyperparameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KnnHyperparameters:
    """The resolved hyperparameters (what ``model_algo-1.json`` records)."""

    feature_dim: int
    k: int
    predictor_type: str
    sample_size: int
    index_type: str = "faiss.Flat"
    index_metric: str = "L2"
    faiss_index_ivf_nlists: str = "auto"
    faiss_index_pq_m: int | None = None
    mini_batch_size: int = 5000


def _int(raw: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int:
    value = raw[key]
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        number = None
    bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    if number is None or number < lo or (hi is not None and number > hi):
        raise HyperparameterError(f"The '{key}' hyperparameter must be an int {bound}, got {value!r}.")
    return number


def _choice(raw: Mapping[str, Any], key: str, choices: Sequence[str], default: str) -> str:
    value = str(raw.get(key, default)).strip()
    if value not in choices:
        raise HyperparameterError(
            f"The '{key}' hyperparameter must be one of {', '.join(choices)}, got {raw.get(key)!r}."
        )
    return value


def parse_hyperparameters(raw: Mapping[str, Any]) -> KnnHyperparameters:
    """Validate the job's string hyperparameters as the service does; raise :class:`HyperparameterError`."""
    unknown = sorted(key for key in raw if key not in _KNOWN and not str(key).startswith("_"))
    if unknown:
        raise HyperparameterError(
            f"Unknown hyperparameter(s) {', '.join(repr(u) for u in unknown)}; the k-NN algorithm takes "
            f"{', '.join(sorted(_KNOWN))}."
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise HyperparameterError(
            f"The required hyperparameter(s) {', '.join(repr(m) for m in missing)} are missing."
        )
    if "dimension_reduction_type" in raw or "dimension_reduction_target" in raw:
        raise HyperparameterError(
            "The 'dimension_reduction_type' and 'dimension_reduction_target' hyperparameters are not "
            "supported by the local k-NN stand-in (no random projection); leave them unset."
        )
    feature_dim = _int(raw, "feature_dim", 1)
    k = _int(raw, "k", 1, MAX_K)
    predictor_type = _choice(raw, "predictor_type", PREDICTOR_TYPES, "")
    sample_size = _int(raw, "sample_size", 1)
    index_type = _choice(raw, "index_type", INDEX_TYPES, "faiss.Flat")
    index_metric = _choice(raw, "index_metric", INDEX_METRICS, "L2")
    if index_type == "faiss.IVFPQ" and index_metric != "L2":
        raise HyperparameterError(
            f"The 'index_metric' hyperparameter {index_metric} is not supported with index_type "
            "faiss.IVFPQ, which takes only L2."
        )
    nlists = str(raw.get("faiss_index_ivf_nlists", "auto")).strip()
    if nlists != "auto":
        nlists = str(_int(raw, "faiss_index_ivf_nlists", 1))
    pq_m: int | None = None
    if "faiss_index_pq_m" in raw:
        pq_m = _int(raw, "faiss_index_pq_m", 1)
        if pq_m not in PQ_M_VALUES:
            raise HyperparameterError(
                f"The 'faiss_index_pq_m' hyperparameter must be one of {', '.join(map(str, PQ_M_VALUES))}, "
                f"got {raw['faiss_index_pq_m']!r}."
            )
    mini_batch_size = _int(raw, "mini_batch_size", 1) if "mini_batch_size" in raw else 5000
    return KnnHyperparameters(
        feature_dim=feature_dim,
        k=k,
        predictor_type=predictor_type,
        sample_size=sample_size,
        index_type=index_type,
        index_metric=index_metric,
        faiss_index_ivf_nlists=nlists,
        faiss_index_pq_m=pq_m,
        mini_batch_size=mini_batch_size,
    )


# --- the model -------------------------------------------------------------------------------------


def _normalise(x: F32) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float32, copy=False)


class KnnModel:
    """A fitted k-NN index with its labels; scikit-learn style (``fit`` returns self).

    ``search`` returns neighbours in faiss's order (best first); :func:`run_transform` turns them into
    the service's output.
    """

    def __init__(self, hyperparameters: KnnHyperparameters) -> None:
        self.hyperparameters = hyperparameters

    # fitted attributes
    index_: Any
    labels_: F32
    nprobe_: int
    padded_dim_: int
    _flat_vectors: F32 | None = None

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> KnnModel:
        import faiss

        hp = self.hyperparameters
        x = np.ascontiguousarray(X, dtype=np.float32)
        labels = np.asarray(y, dtype=np.float32).reshape(-1)
        if x.ndim != 2 or x.shape[1] != hp.feature_dim:
            raise DataError(f"The training vectors have shape {x.shape}; feature_dim is {hp.feature_dim}.")
        if labels.shape[0] != x.shape[0]:
            raise DataError(f"{x.shape[0]} training vectors but {labels.shape[0]} labels.")
        if x.shape[0] == 0:
            raise DataError("The 'train' channel holds no records.")
        if not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise DataError(f"Training record {row} holds a NaN or infinite value.")
        if x.shape[0] > hp.sample_size:
            rng = np.random.default_rng(SAMPLE_SEED)
            keep = np.sort(rng.choice(x.shape[0], size=hp.sample_size, replace=False))
            x, labels = x[keep], labels[keep]
        if hp.index_metric == "COSINE":
            x = _normalise(x)
        n, d = x.shape
        metric = faiss.METRIC_L2 if hp.index_metric == "L2" else faiss.METRIC_INNER_PRODUCT
        self.nprobe_ = 1
        self.padded_dim_ = d
        index: Any
        if hp.index_type == "faiss.Flat":
            index = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
        else:
            nlists = (
                max(1, int(math.sqrt(hp.sample_size)))
                if hp.faiss_index_ivf_nlists == "auto"
                else int(hp.faiss_index_ivf_nlists)
            )
            nlists = min(nlists, n)  # faiss cannot train more centroids than there are vectors
            self.nprobe_ = max(1, nlists // 8)
            if hp.index_type == "faiss.IVFFlat":
                quantizer = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
                index = faiss.IndexIVFFlat(quantizer, d, nlists, metric)
            else:
                m = hp.faiss_index_pq_m or _default_pq_m(d)
                padded = -(-d // m) * m
                x = _pad(x, padded)
                self.padded_dim_ = padded
                # 8 bits per code needs 256 training vectors per sub-quantizer; fewer, fewer bits
                nbits = max(1, min(8, int(math.log2(n))))
                quantizer = faiss.IndexFlatL2(padded)
                index = faiss.IndexIVFPQ(quantizer, padded, nlists, m, nbits)
            index.train(x)
            index.nprobe = self.nprobe_
        index.add(x)
        self.index_ = index
        self.labels_ = labels
        self._flat_vectors = None
        return self

    @property
    def uses_topk_kernel(self) -> bool:
        hp = self.hyperparameters
        return hp.index_type == "faiss.Flat" and hp.index_metric in ("INNER_PRODUCT", "COSINE")

    def search(self, queries: npt.ArrayLike, k: int | None = None) -> tuple[F32, I64]:
        """``(distances, indices)`` of the k nearest indexed vectors, best first (faiss's order)."""
        hp = self.hyperparameters
        k = hp.k if k is None else k
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != hp.feature_dim:
            raise DataError(f"The query vectors have shape {q.shape}; the model's feature_dim is "
                            f"{hp.feature_dim}.")
        if hp.index_metric == "COSINE":
            q = _normalise(q)
        if self.uses_topk_kernel:
            from recpipe.algorithms.topk import topk_inner_product

            if self._flat_vectors is None:
                self._flat_vectors = np.ascontiguousarray(
                    self.index_.reconstruct_n(0, self.index_.ntotal), dtype=np.float32
                )
            scores, idx = topk_inner_product(q, self._flat_vectors, k)
            scores[idx < 0] = -_F32_MAX  # faiss's sentinel for "no neighbour" with inner products
            return scores, idx
        q = _pad(q, self.padded_dim_)
        distances, idx = self.index_.search(q, k)
        return distances.astype(np.float32, copy=False), idx.astype(np.int64, copy=False)

    # -- persistence, in the service's file layout

    def save(self, model_dir: Path) -> list[Path]:
        import faiss

        model_dir.mkdir(parents=True, exist_ok=True)
        index_path = model_dir / MODEL_NAME
        labels_path = model_dir / f"{MODEL_NAME}.labels"
        meta_path = model_dir / f"{MODEL_NAME}.json"
        faiss.write_index(self.index_, str(index_path))
        self.labels_.astype("<f4").tofile(labels_path)
        meta = {
            "format_version": FORMAT_VERSION,
            "hyperparameters": asdict(self.hyperparameters),
            "n_vectors": int(self.index_.ntotal),
            "padded_dim": self.padded_dim_,
            "nprobe": self.nprobe_,
            "labels_format": "raw little-endian float32, one per indexed vector, in index order",
        }
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return [index_path, labels_path, meta_path]

    @classmethod
    def load(cls, model_dir: Path) -> KnnModel:
        import faiss

        meta_path = model_dir / f"{MODEL_NAME}.json"
        index_path = model_dir / MODEL_NAME
        labels_path = model_dir / f"{MODEL_NAME}.labels"
        for path in (meta_path, index_path, labels_path):
            if not path.is_file():
                raise ClientError(f"The model is missing {path.name} (looked in {model_dir}).")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            hp = KnnHyperparameters(**meta["hyperparameters"])
        except (ValueError, KeyError, TypeError) as err:
            raise ClientError(
                f"The model file {meta_path.name} is not a k-NN model description: {err}."
            ) from err
        model = cls(hp)
        model.index_ = faiss.read_index(str(index_path))
        model.labels_ = np.fromfile(labels_path, dtype="<f4").astype(np.float32)
        if model.labels_.shape[0] != model.index_.ntotal:
            raise ClientError(
                f"{labels_path.name} holds {model.labels_.shape[0]} labels but the index holds "
                f"{model.index_.ntotal} vectors."
            )
        model.nprobe_ = int(meta.get("nprobe", 1))
        model.padded_dim_ = int(meta.get("padded_dim", hp.feature_dim))
        if hasattr(model.index_, "nprobe"):
            model.index_.nprobe = model.nprobe_
        return model


def _default_pq_m(d: int) -> int:
    """The largest allowed m dividing d (no padding needed), else the smallest allowed m >= d / 8."""
    dividing = [m for m in PQ_M_VALUES if d % m == 0 and m <= d]
    return max(dividing) if dividing else min(m for m in PQ_M_VALUES if m >= d / 8)


def _pad(x: F32, width: int) -> F32:
    if x.shape[1] >= width:
        return x
    out = np.zeros((x.shape[0], width), dtype=np.float32)
    out[:, : x.shape[1]] = x
    return out


# --- predictions and output ------------------------------------------------------------------------


def predict_labels(neighbour_labels: F32, valid: npt.NDArray[np.bool_], predictor_type: str) -> F32:
    """Per row: the majority label (classifier; ties: the label met first, i.e. nearest) or the mean."""
    n = neighbour_labels.shape[0]
    out = np.full(n, np.nan, dtype=np.float32)
    if predictor_type == "regressor":
        counts = valid.sum(axis=1)
        sums = np.where(valid, neighbour_labels, 0).astype(np.float64).sum(axis=1)
        np.divide(sums, counts, out=sums, where=counts > 0)
        out[counts > 0] = sums[counts > 0]
        return out
    # Rows whose labels are all distinct (item indices, as in the pipeline) predict their nearest
    # neighbour's label: found with array operations; only rows with repeats need a count.
    masked = np.where(valid, neighbour_labels, np.nan)
    ordered = np.sort(masked, axis=1)
    repeats = np.any(ordered[:, 1:] == ordered[:, :-1], axis=1)  # NaN (padding) never equals
    has_any = valid.any(axis=1)
    first = np.argmax(valid, axis=1)
    simple = has_any & ~repeats
    out[simple] = neighbour_labels[simple, first[simple]]
    for r in np.flatnonzero(repeats):
        row = neighbour_labels[r][valid[r]]
        values, first_at, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts.max()
        out[r] = values[first_at == first_at[counts == best].min()][0]
    return out


def _fmt(x: float) -> str:
    """A float32 as the service prints it: 9 significant digits (exact round trip), "7.0" not "7"."""
    if math.isnan(x):
        return "null"
    if math.isinf(x):  # JSON has no infinities: faiss's float32 sentinels instead
        return "3.40282347e+38" if x > 0 else "-3.40282347e+38"
    text = f"{x:.9g}"
    return text if any(c in text for c in ".e") else text + ".0"


def _row_texts(values: F32) -> list[str]:
    """Each row's numbers as ``_fmt`` prints them, joined by ", " (fast paths for the common cases)."""
    if not np.isfinite(values).all():
        return [", ".join(map(_fmt, row)) for row in values.tolist()]
    if np.array_equal(values, np.round(values)) and (values.size == 0 or np.abs(values).max() < 2**53):
        return [".0, ".join(map(str, row)) + ".0" if row else "" for row in values.astype(np.int64).tolist()]
    fmt = "{:.9g}".format
    texts = []
    for row in values.tolist():
        parts = [fmt(v) for v in row]
        texts.append(", ".join([t if ("." in t or "e" in t) else t + ".0" for t in parts]))
    return texts


def _write_jsonlines(fileobj: IO[str], labels: F32, distances: F32, predicted: F32, verbose: bool) -> None:
    if not verbose:
        for p in predicted.tolist():
            fileobj.write(f'{{"predicted_label": {_fmt(p)}}}\n')
        return
    for p, lab, dist in zip(predicted.tolist(), _row_texts(labels), _row_texts(distances), strict=True):
        fileobj.write(f'{{"predicted_label": {_fmt(p)}, "labels": [{lab}], "distances": [{dist}]}}\n')


def _write_json(fileobj: IO[str], labels: F32, distances: F32, predicted: F32, verbose: bool) -> None:
    fileobj.write('{"predictions": [')
    if verbose:
        rows = zip(predicted.tolist(), _row_texts(labels), _row_texts(distances), strict=True)
        for r, (p, lab, dist) in enumerate(rows):
            sep = ", " if r else ""
            fileobj.write(f'{sep}{{"predicted_label": {_fmt(p)}, "distances": [{dist}], "labels": [{lab}]}}')
    else:
        fileobj.write(", ".join(f'{{"predicted_label": {_fmt(p)}}}' for p in predicted.tolist()))
    fileobj.write("]}\n")


def _parse_media_type(value: str, what: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise ClientError(f"The {what} '{value}' has a parameter without a value: '{part}'.")
        params[key.strip().lower()] = val.strip().strip('"').lower()
    return parts[0].lower(), params


Writer = Callable[[IO[str], F32, F32, F32, bool], None]


def _output_writer(accept: str) -> tuple[Writer, bool]:
    media, params = _parse_media_type(accept or "application/json", "accept type")
    verbose = params.get("verbose", "false") == "true"
    if media == "application/jsonlines":
        return _write_jsonlines, verbose
    if media == "application/json":
        return _write_json, verbose
    raise ClientError(
        f"The accept type '{accept}' is not supported by the local k-NN stand-in; use "
        "'application/jsonlines; verbose=true', 'application/jsonlines' or 'application/json'."
    )


# --- the container entry points ---------------------------------------------------------------------


def _channel_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _read_train(opt_ml: Path, feature_dim: int) -> tuple[F32, F32]:
    from recpipe.formats.recordio import read_dense

    directory = opt_ml / "input" / "data" / "train"
    if not directory.is_dir():
        raise DataError("The 'train' channel is required (no input/data/train directory).")
    files = _channel_files(directory)
    if not files:
        raise DataError(f"The 'train' channel ({directory}) holds no files.")
    arrays: list[F32] = []
    labels: list[F32] = []
    for path in files:
        try:
            x, y = read_dense(path)
        except Exception as err:  # the reader's error names the record; add the file
            raise DataError(
                f"Unable to read the 'train' channel file {path.name} as recordio-protobuf: {err}"
            ) from err
        if y is None:
            raise DataError(f"The 'train' channel file {path.name} has records without a label.")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] and x.shape[1] != feature_dim:
            raise DataError(
                f"The 'train' channel file {path.name} has {x.shape[1]} features per record, "
                f"but feature_dim is {feature_dim}."
            )
        arrays.append(x.reshape(x.shape[0], feature_dim))
        labels.append(np.asarray(y, dtype=np.float32).reshape(-1))
    return np.concatenate(arrays), np.concatenate(labels)


def run_training_job(opt_ml: Path, *, on_epoch: OnEpoch | None = None,
                     n_jobs: NJobs = None) -> list[dict[str, Any]]:
    """Run one k-NN training job in ``opt_ml`` as the built-in container does; see the module docstring.

    Returns the final metrics (none: the built-in k-NN reports no training metric). On a bad
    hyperparameter or bad data it writes the reason to ``output/failure`` and raises
    :class:`~recpipe.algorithms.exceptions.AlgorithmError` (``str()`` = that reason). ``on_epoch`` and
    ``n_jobs`` are the contract's (:mod:`recpipe.algorithms.container`): building the index has no
    epochs, and the exact top-k kernels pick their threads at query time.
    """
    del on_epoch, n_jobs
    opt_ml = Path(opt_ml)
    with training_job(opt_ml):
        hp = parse_hyperparameters(read_hyperparameters(opt_ml))
        x, y = _read_train(opt_ml, hp.feature_dim)
        KnnModel(hp).fit(x, y).save(opt_ml / "model")
    return []


def run_transform(
    model_dir: Path,
    input_files: Sequence[Path],
    output_dir: Path,
    *,
    content_type: str,
    accept: str,
    split_type: str = "RecordIO",
) -> list[Path]:
    """Batch transform: ``<input name>.out`` in ``output_dir`` per input file; returns those paths.

    Raises :class:`~recpipe.algorithms.exceptions.ClientError` for an unsupported content type,
    accept type or split type, a missing model file, or queries of the wrong width.
    """
    from recpipe.formats.recordio import read_dense

    media, _ = _parse_media_type(content_type or "", "content type")
    if media != RECORDIO:
        raise ClientError(
            f"The content type '{content_type}' is not supported by the local k-NN stand-in; "
            f"send '{RECORDIO}'."
        )
    if split_type not in ("RecordIO", "None"):
        raise ClientError(f"The split type '{split_type}' does not fit {RECORDIO} input; use RecordIO.")
    writer, verbose = _output_writer(accept)
    model = KnnModel.load(Path(model_dir))
    hp = model.hyperparameters
    higher_is_better = hp.index_metric != "L2"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in input_files:
        path = Path(path)
        try:
            queries, _ = read_dense(path)
        except Exception as err:
            raise ClientError(f"Unable to read the input file {path.name} as {RECORDIO}: {err}") from err
        queries = np.asarray(queries, dtype=np.float32)
        if queries.shape[0] and queries.shape[1] != hp.feature_dim:
            raise ClientError(
                f"The input file {path.name} has {queries.shape[1]} features per record, but the model's "
                f"feature_dim is {hp.feature_dim}."
            )
        queries = queries.reshape(queries.shape[0], hp.feature_dim)
        distances, idx = model.search(queries)
        valid = idx >= 0
        labels = np.where(valid, model.labels_[np.where(valid, idx, 0)], np.float32(-1)).astype(np.float32)
        predicted = predict_labels(labels, valid, hp.predictor_type)
        if higher_is_better:  # faiss lists similarities best first; the service lists ascending
            labels, distances = labels[:, ::-1], distances[:, ::-1]
        target = output_dir / f"{path.name}.out"
        if writer is _write_jsonlines and verbose:  # the pipeline's case: the project's one writer
            from recpipe.formats.knn_output import write_verbose_jsonlines

            integral = bool(np.array_equal(labels, np.round(labels))) and (
                labels.size == 0 or float(np.abs(labels).max()) < 2**53
            )
            with target.open("wb") as out:
                write_verbose_jsonlines(
                    out, labels.astype(np.int64) if integral else labels, distances, predicted
                )
        else:
            with target.open("w", encoding="utf-8") as fh:
                writer(fh, labels, distances, predicted, verbose)
        written.append(target)
    return written
