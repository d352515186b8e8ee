"""Errors of the local stand-ins for the built-in algorithms.

``str(error)`` is exactly the ``FailureReason`` SageMaker would report for the job, so the local
engine can write it to ``OPT_ML/output/failure`` and surface it unchanged. SageMaker prefixes a
reason with who is to blame: ``ClientError`` (bad hyperparameters or data: the caller's fault) or
``AlgorithmError`` (the algorithm itself failed).
"""

from __future__ import annotations


class AlgorithmError(Exception):
    """A training or transform job failure whose ``str()`` is the job's FailureReason."""

    #: The blame prefix SageMaker puts in front of the reason.
    error_type: str = "AlgorithmError"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{self.error_type}: {reason}")

    @property
    def failure_reason(self) -> str:
        """The text SageMaker shows as ``FailureReason`` (the same as ``str(self)``)."""
        return str(self)


class ClientError(AlgorithmError):
    """The caller's fault: bad hyperparameters, channels or data."""

    error_type = "ClientError"


class HyperparameterError(ClientError):
    """A hyperparameter that is unknown, missing, of the wrong type or out of range."""


class DataError(ClientError):
    """A channel that is missing, empty, unreadable or inconsistent with the hyperparameters."""
