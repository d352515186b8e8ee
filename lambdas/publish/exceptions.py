"""Errors of the Publish step (the version and pointer errors are in :mod:`recpipe.results.exceptions`)."""

from __future__ import annotations

from recpipe.lambda_errors import PipelineError


class PublishError(PipelineError):
    """Base class of the Publish step's own errors."""


class WriteRetriesExhaustedError(PublishError):
    """DynamoDB kept throttling or returning UnprocessedItems after the last retry; nothing was dropped
    silently: the message says how many items were left and the run's rows stay invisible."""
