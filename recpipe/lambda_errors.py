"""Errors the pipeline's Lambdas raise (one module for all of them).

Step Functions reports a Python Lambda's failure with the exception's class name as the error
name and its message in the cause, so these names are what a console user sees and what
``Retry``/``Catch`` ``ErrorEquals`` match: keep them stable and the messages specific (which
bucket/key, which field).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error a recpipe Lambda raises on purpose."""


class InputError(PipelineError, ValueError):
    """The event (or the execution input behind it) is malformed: a key is missing or has a bad value."""


class NotFoundError(PipelineError):
    """An S3 object (or other resource) the step needs does not exist; the message names it."""


class SchemaVersionError(PipelineError):
    """A document (e.g. the processing manifest) has a schema version this code does not read."""


class LockHeldError(PipelineError):
    """Another run holds the pipeline lock; the message names the owner run and when it expires."""


class ConfigurationError(PipelineError):
    """The function's deployment is incomplete, e.g. an environment variable is not set."""
