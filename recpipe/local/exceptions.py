"""Errors of the local engine (one module, as everywhere in recpipe)."""

from __future__ import annotations


class LocalEngineError(RuntimeError):
    """The local engine could not set up or run an execution (not a failure of the pipeline itself)."""


class MotoInternalsError(LocalEngineError):
    """moto's Step Functions internals moved: the pinned version is not the one installed."""


class DynamoDBServerError(LocalEngineError):
    """The local DynamoDB server (dynalite) could not be started or reached."""


class TaskFailure(Exception):
    """Raised by a local task handler: the error name and cause Step Functions would report.

    ``error`` is matched by ``Retry``/``Catch`` ``ErrorEquals`` exactly as on AWS (for example
    ``States.TaskFailed`` for a ``.sync`` job that ended ``Failed``, ``SageMaker.AmazonSageMakerException``
    for a rejected request, or a Python Lambda's own exception class name).
    """

    def __init__(self, error: str, cause: str) -> None:
        self.error = error
        self.cause = cause
        super().__init__(f"{error}: {cause}")
