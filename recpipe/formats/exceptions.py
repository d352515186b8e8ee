"""Errors of ``recpipe.formats``: one module, every class a ``ValueError`` subclass."""

from __future__ import annotations

__all__ = ["FormatError", "KnnOutputError", "MXNetFormatError", "ModelArtifactError", "RecordIOError"]


class FormatError(ValueError):
    """Base class of the errors about bytes that do not follow a format."""


class RecordIOError(FormatError):
    """Invalid recordio-protobuf input (bad bytes) or writer arguments."""


class MXNetFormatError(FormatError):
    """An MXNet NDArray list (``nd.save``) file that cannot be read or written."""


class ModelArtifactError(FormatError):
    """A SageMaker model artifact (``model.tar.gz``) without the expected members or arrays."""


class KnnOutputError(FormatError):
    """A malformed k-NN batch transform (verbose jsonlines) output."""
