"""Waiting for moto's Step Functions executions without polling or sleeping.

moto runs each execution (and each inline Map iteration) in a thread it appends to
``moto.stepfunctions.parser.utils.TMP_THREADS``; joining them waits exactly until the executions
started so far have ended. (``recpipe.local.moto_hook`` pins the moto version these internals are
from.)
"""

from __future__ import annotations

import time


def wait_for_executions(timeout_s: float = 60.0) -> None:
    """Block until every execution moto has started has ended; fail after ``timeout_s``."""
    from moto.stepfunctions.parser.utils import TMP_THREADS

    deadline = time.monotonic() + timeout_s
    for thread in list(TMP_THREADS):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise AssertionError(f"a Step Functions execution was still running after {timeout_s} s")
