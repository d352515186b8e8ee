"""Training jobs running at once share the cores equally; a job left alone takes them back."""

from __future__ import annotations

import pytest

from recpipe.local.sagemaker.training import CoreShare


def test_jobs_split_the_cores_and_give_them_back() -> None:
    share = CoreShare(cores=2)
    with share.job() as first:
        assert first() == 2
        with share.job() as second:
            assert (first(), second()) == (1, 1)
            assert share.running == 2
        assert first() == 2  # the other job ended: its core comes back at the next ask
    assert share.running == 0


def test_never_fewer_than_one_thread() -> None:
    share = CoreShare(cores=2)
    with share.job(), share.job(), share.job() as third:
        assert third() == 1


def test_a_failing_job_still_leaves() -> None:
    share = CoreShare(cores=4)
    with pytest.raises(RuntimeError), share.job():
        raise RuntimeError("training failed")
    assert share.running == 0
