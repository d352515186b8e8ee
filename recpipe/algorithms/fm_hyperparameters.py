"""The built-in Factorization Machines' hyperparameters: names, documented defaults, valid values,
and their parsing from a training job's ``hyperparameters.json`` (all values strings).

Error messages read like "The 'num_factors' parameter must be an int in [1, 1000], got 0."
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recpipe.algorithms.exceptions import HyperparameterError

_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class _Spec:
    """One hyperparameter of the built-in algorithm: its type, default and valid range."""

    kind: type  # int, float, str, bool
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False  # required by the training job (the class has a default)
    nullable: bool = False  # None means "not set" (e.g. clip_gradient)

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "'true' or 'false'"
        name = "an int" if self.kind is int else "a float"
        if self.lo is not None and self.hi is not None:
            return f"{name} in [{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"{name} >= {self.lo:g}"
        return name


_INIT_METHODS = ("normal", "uniform", "constant")


def _init_specs(group: str, sigma: float) -> dict[str, _Spec]:
    return {
        f"{group}_init_method": _Spec(str, "normal", choices=_INIT_METHODS),
        f"{group}_init_scale": _Spec(float, None, lo=0.0, nullable=True),
        f"{group}_init_sigma": _Spec(float, sigma, lo=0.0),
        f"{group}_init_value": _Spec(float, None, nullable=True),
    }


#: The built-in algorithm's hyperparameters with their documented defaults and valid values.
HYPERPARAMETERS: dict[str, _Spec] = {
    "feature_dim": _Spec(int, None, lo=1, hi=_INT_MAX, required=True, nullable=True),
    "num_factors": _Spec(int, 64, lo=1, hi=1000, required=True),
    "predictor_type": _Spec(str, "regressor", choices=("regressor", "binary_classifier"), required=True),
    "epochs": _Spec(int, 1, lo=1, hi=1_000_000),
    "mini_batch_size": _Spec(int, 1000, lo=1, hi=10_000_000),
    "clip_gradient": _Spec(float, None, lo=0.0, nullable=True),
    "eps": _Spec(float, 1e-8, lo=0.0),
    "rescale_grad": _Spec(float, None, nullable=True),
    "bias_lr": _Spec(float, 0.1, lo=0.0),
    "linear_lr": _Spec(float, 0.001, lo=0.0),
    "factors_lr": _Spec(float, 0.0001, lo=0.0),
    "bias_wd": _Spec(float, 0.01, lo=0.0),
    "linear_wd": _Spec(float, 0.001, lo=0.0),
    "factors_wd": _Spec(float, 0.00001, lo=0.0),
    **_init_specs("bias", 0.01),
    **_init_specs("linear", 0.01),
    **_init_specs("factors", 0.001),
    "use_bias": _Spec(bool, True),
    "use_linear": _Spec(bool, True),
}

#: Names SageMaker itself may add to a job's hyperparameters; accepted and ignored.
_PLATFORM_HYPERPARAMETERS = frozenset({"_tuning_objective_metric"})


def check_value(name: str, value: Any) -> Any:
    """Validate one typed hyperparameter value; return it normalised (ints as int, floats as float)."""
    spec = HYPERPARAMETERS[name]
    if value is None and spec.nullable:
        return None
    bad = HyperparameterError(f"The '{name}' parameter must be {spec.describe()}, got {value!r}.")
    if spec.kind is bool:
        if not isinstance(value, bool | np.bool_):
            raise bad
        return bool(value)
    if spec.kind is str:
        if not isinstance(value, str) or (spec.choices is not None and value not in spec.choices):
            raise bad
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise bad
    if spec.kind is int:
        if isinstance(value, float | np.floating) and not float(value).is_integer():
            raise bad
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad
    if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
        raise bad
    return value


def _parse_string(name: str, text: str) -> Any:
    """A hyperparameter as SageMaker passes it (a string) -> its typed value (not yet range-checked)."""
    spec = HYPERPARAMETERS[name]
    raw = text.strip()
    bad = HyperparameterError(f"The '{name}' parameter must be {spec.describe()}, got {text!r}.")
    if spec.kind is str:
        return raw
    if spec.kind is bool:
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise bad
    if spec.nullable and raw.lower() in ("", "none", "null"):
        return None
    try:
        number = float(raw)
    except ValueError:
        raise bad from None
    if spec.kind is int:
        if not number.is_integer():
            raise bad
        return int(number)
    return number


def unknown_hyperparameter(name: str) -> HyperparameterError:
    close = difflib.get_close_matches(name, HYPERPARAMETERS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return HyperparameterError(f"Unknown hyperparameter '{name}'{hint}.")


def parse_hyperparameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The job's ``hyperparameters.json`` (all values strings) -> typed, validated keyword arguments.

    Raises :class:`HyperparameterError` on an unknown name, a missing required one
    (``feature_dim``, ``num_factors``, ``predictor_type``) or a bad value.
    """
    parsed: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _PLATFORM_HYPERPARAMETERS:
            continue
        if name not in HYPERPARAMETERS:
            raise unknown_hyperparameter(name)
        if isinstance(value, str):
            value = _parse_string(name, value)
        parsed[name] = check_value(name, value)
    missing = [n for n, s in HYPERPARAMETERS.items() if s.required and parsed.get(n) is None]
    if missing:
        raise HyperparameterError(
            "Missing required hyperparameter" + ("s " if len(missing) > 1 else " ")
            + ", ".join(f"'{n}'" for n in missing) + "."
        )
    return parsed
