"""Errors of :mod:`recpipe.executions`."""

from __future__ import annotations


class RecordNotFoundError(LookupError):
    """No local record of the requested execution in the work directory."""
