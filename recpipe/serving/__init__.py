"""Reading what Publish wrote, as the read API serves it (``lambdas/api``, ``recpipe serve``).

:class:`~recpipe.serving.reader.Reader` follows the active pointer (cached for a short time) and
reads one row per request: a user's recommendations, with a cold-start fallback for users the
active version has no row for, and an item's similar items. Standard library + boto3 only (it runs
in the API Lambda).
"""

from recpipe.serving.reader import ActiveVersion, Reader

__all__ = ["ActiveVersion", "Reader"]
