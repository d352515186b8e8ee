"""Errors of the Publish step (and of re-activating an older version)."""

from __future__ import annotations

from recpipe.lambda_errors import PipelineError


class PublishError(PipelineError):
    """Base class of the Publish step's own errors."""


class WriteRetriesExhaustedError(PublishError):
    """DynamoDB kept throttling or returning UnprocessedItems after the last retry; nothing was dropped
    silently: the message says how many items were left and the run's rows stay invisible."""


class PointerConflictError(PublishError):
    """The active-version pointer changed between reading it and flipping it (another publish or a
    rollback ran at the same time)."""


class VersionNotActivatableError(PublishError):
    """Re-activation refused: the version is unknown, still being written, or expired."""
