"""The SageMaker training-container contract shared by the local stand-ins (FM, k-NN).

Each stand-in module has ``run_training_job(opt_ml, *, on_epoch=None, n_jobs=None)``, called
with both by the local engine (``recpipe.local.sagemaker.training``): ``on_epoch`` is an
:data:`OnEpoch`, ``n_jobs`` an :data:`NJobs`; a stand-in without epochs or threads ignores them.

A job reads ``<opt_ml>/input/config/hyperparameters.json`` (string values); on failure it writes
the reason to ``<opt_ml>/output/failure``, which SageMaker reports as the job's ``FailureReason``,
and any unexpected exception counts as the algorithm's own error, as on SageMaker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recpipe.algorithms.exceptions import AlgorithmError, HyperparameterError

#: ``on_epoch(epoch, epochs, metrics)``, called after every epoch (epoch counts from 1); metrics
#: are named as SageMaker names them (``train:rmse``, ``test:rmse``, ...).
OnEpoch = Callable[[int, int, dict[str, float]], None]

#: Training threads: ``None`` (every available core), an int >= 1, or a callable returning the
#: number to use, asked before every epoch (answers below 1 count as 1, above the cores as the cores).
NJobs = int | Callable[[], int] | None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity on Linux). A built-in container has its
    instance to itself, so this is what a stand-in uses unless told otherwise."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def read_hyperparameters(opt_ml: Path) -> dict[str, Any]:
    """The job's hyperparameters as given (no file = none given)."""
    path = Path(opt_ml) / "input" / "config" / "hyperparameters.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise HyperparameterError(f"{path.name} is not valid JSON: {err}.") from err
    if not isinstance(raw, dict):
        raise HyperparameterError(f"{path.name} must hold a JSON object, got {type(raw).__name__}.")
    return raw


def write_failure(opt_ml: Path, error: AlgorithmError) -> None:
    out = Path(opt_ml) / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "failure").write_text(error.failure_reason, encoding="utf-8")


@contextmanager
def training_job(opt_ml: Path) -> Iterator[None]:
    """Around a job's body: record an :class:`AlgorithmError` in the failure file and re-raise it;
    wrap anything else as an :class:`AlgorithmError` first."""
    try:
        yield
    except AlgorithmError as err:
        write_failure(opt_ml, err)
        raise
    except Exception as err:
        wrapped = AlgorithmError(f"{type(err).__name__}: {err}")
        write_failure(opt_ml, wrapped)
        raise wrapped from err
