"""The errors the infrastructure code raises at synth time (never at deploy time)."""

from __future__ import annotations


class InfraError(Exception):
    """Base class of every error raised by ``infra``."""


class SettingsError(InfraError, ValueError):
    """A ``cdk.json`` context value that does not fit; the message names the context key."""


class BundlingError(InfraError, RuntimeError):
    """Packaging the Lambda code or its dependencies failed (pip, a missing file, the size limit)."""


class WiringError(InfraError, LookupError):
    """The workflow definition asks for a ``${Placeholder}`` or a function the stack does not provide."""
