"""Errors of reaching the deployed stack (one module, as everywhere in recpipe)."""

from __future__ import annotations


class RemoteError(RuntimeError):
    """Base class: the CLI could not find or reach a deployed resource; the message says which."""


class StackOutputsError(RemoteError):
    """The CloudFormation stack is missing, or lacks an output the command needs."""


class ExecutionNotFoundError(RemoteError):
    """No execution of the state machine matches the run id, execution name or ARN given."""


class AwsAccessError(RemoteError):
    """An AWS call failed (no credentials, no region, access denied, missing resource); wraps the
    botocore error with the call and the resource it was about."""
