"""Errors of the results table's logic (versions, pointer, lock).

They derive from :class:`recpipe.lambda_errors.PipelineError`: a Lambda raising one reports the class
name as its Step Functions error name.
"""

from __future__ import annotations

from recpipe.lambda_errors import PipelineError


class ResultsError(PipelineError):
    """Base class of the results table's own errors."""


class PointerConflictError(ResultsError):
    """The active-version pointer changed between reading it and flipping it (another publish or a
    rollback ran at the same time)."""


class VersionNotActivatableError(ResultsError):
    """Re-activation refused: the version is unknown, still being written, or expired."""


class ShardReportError(ResultsError):
    """Commit refused: a Publish shard wrote no report, or one that does not match its shard."""
