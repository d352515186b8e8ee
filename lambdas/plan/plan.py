"""The Plan step's work: the training jobs' hyperparameters from the config and the manifest.

CreateTrainingJob takes hyperparameters as a map of strings, and the built-in algorithms reject
names they do not know, so only the algorithms' own names appear here.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from recpipe import config as cfg
from recpipe.lambda_errors import InputError

KNN_MAX_K = 1024  # the built-in k-NN's limit
FM_KEYS = ("num_factors", "epochs", "mini_batch_size", "bias_lr", "linear_lr", "factors_lr", "bias_wd",
           "linear_wd", "factors_wd", "bias_init_sigma", "linear_init_sigma", "factors_init_sigma")
PREDICTOR_TYPES = {"implicit": "binary_classifier", "explicit": "regressor"}


def hp_string(value: Any) -> str:
    """A hyperparameter value as the string CreateTrainingJob wants: ints as ints, floats in plain
    positional notation (``1e-05`` -> ``0.00001``), bools lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def _positive_int(manifest: Mapping[str, Any], path: str, uri: str) -> int:
    node: Any = manifest
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, bool) or not isinstance(node, int) or node < 1:
        raise InputError(f"The manifest {uri} must have a positive integer '{path}', got {node!r}.")
    return node


def plan(config: Mapping[str, Any], manifest: Mapping[str, Any],
         manifest_uri: str = "manifest") -> dict[str, Any]:
    """``{"fm_hyperparameters", "knn_hyperparameters", "feature_dim", "n_users", "n_items", "k"}``.

    ``config`` is the run's resolved config, nested or flat; it is re-validated here.
    """
    try:
        flat = cfg.resolve(config)
    except cfg.ConfigError as exc:
        raise InputError(f"The Plan event's config is invalid: {'; '.join(exc.problems)}.") from exc
    feature_dim = _positive_int(manifest, "feature_dim", manifest_uri)
    n_items = _positive_int(manifest, "counts.items", manifest_uri)
    n_users = _positive_int(manifest, "counts.users", manifest_uri)
    mode = str(flat["processing.mode"])
    processed_mode = (manifest.get("config") or {}).get("processing.mode", mode)
    if processed_mode != mode:
        raise InputError(f"The manifest {manifest_uri} was processed in '{processed_mode}' mode but the "
                         f"run's config says processing.mode='{mode}'.")

    fm = {key: hp_string(flat[f"fm.{key}"]) for key in FM_KEYS}
    fm["feature_dim"] = str(feature_dim)
    fm["predictor_type"] = PREDICTOR_TYPES[mode]

    # Fetch top_n plus a margin so that items the user has seen can be dropped; never more
    # neighbours than the service allows or than there are items.
    k = min(int(flat["publish.top_n"]) + int(flat["knn.k_margin"]), KNN_MAX_K, n_items)
    knn = {
        "feature_dim": str(int(flat["fm.num_factors"]) + 1),  # concat(V^T x, bias term)
        "k": str(k),
        "sample_size": str(n_items),
        "predictor_type": "classifier",
        "index_type": str(flat["knn.index_type"]),
        "index_metric": "INNER_PRODUCT",
    }
    return {"fm_hyperparameters": fm, "knn_hyperparameters": knn, "feature_dim": feature_dim,
            "n_users": n_users, "n_items": n_items, "k": k}
