"""Errors of the read path; each carries the HTTP status the API answers with."""

from __future__ import annotations


class ServingError(Exception):
    """Base class; ``status`` is the HTTP status code of the API's answer."""

    status = 500


class InvalidRequestError(ServingError):
    """A bad parameter (``n`` out of range, too many ``recent`` items): 400."""

    status = 400


class NotFoundError(ServingError):
    """An item the active version has no row for: 404."""

    status = 404


class NoActiveVersionError(ServingError):
    """Nothing is published yet (or the active version's items expired): 503."""

    status = 503


class TableReadError(ServingError):
    """DynamoDB refused a read; the message names the table and the key: 502."""

    status = 502
