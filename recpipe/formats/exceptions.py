"""Errors of ``recpipe.formats``: one module, every class a ``ValueError`` subclass.

``RecordIOError`` is defined in ``recordio.py`` itself because that module ships standalone
(as ``recpipe_recordio.py``) into the SageMaker processing container; it is re-exported here.
"""

from __future__ import annotations

from recpipe.formats.recordio import RecordIOError

__all__ = ["FormatError", "KnnOutputError", "MXNetFormatError", "ModelArtifactError", "RecordIOError"]


class FormatError(ValueError):
    """Base class of the errors about bytes that do not follow a format (except RecordIOError)."""


class MXNetFormatError(FormatError):
    """An MXNet NDArray list (``nd.save``) file that cannot be read or written."""


class ModelArtifactError(FormatError):
    """A SageMaker model artifact (``model.tar.gz``) without the expected members or arrays."""


class KnnOutputError(FormatError):
    """A malformed k-NN batch transform (verbose jsonlines) output."""
