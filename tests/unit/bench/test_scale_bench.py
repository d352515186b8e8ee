"""bench/scale.py: the synthetic dataset generator and the Publish projection (small sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[3] / "bench" / "scale.py"
_spec = importlib.util.spec_from_file_location("bench_scale", _PATH)
assert _spec is not None and _spec.loader is not None
scale = importlib.util.module_from_spec(_spec)
sys.modules["bench_scale"] = scale
_spec.loader.exec_module(scale)


def test_generate_gives_exactly_the_distinct_pairs_asked_for() -> None:
    data = scale.generate(300, 400, 6000, topics=8, seed=1)
    users, items = data.users, data.items
    assert len(users) == len(items) == 6000
    assert len(np.unique(users * 400 + items)) == 6000  # no (user, item) pair twice
    assert users.min() == 0 and users.max() == 299 and (np.diff(users) >= 0).all()  # grouped by user
    assert items.min() >= 0 and items.max() < 400
    assert np.bincount(users, minlength=300).min() >= scale.MIN_ROWS_PER_USER


def test_generate_is_seeded() -> None:
    a = scale.generate(50, 100, 500, topics=4, seed=3)
    b = scale.generate(50, 100, 500, topics=4, seed=3)
    c = scale.generate(50, 100, 500, topics=4, seed=4)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert not np.array_equal(a.items, c.items)


def test_popularity_is_skewed() -> None:
    items = scale.generate(2000, 1000, 40000, topics=10, seed=0).items
    pop = np.sort(np.bincount(items, minlength=1000))[::-1]
    assert pop[:100].sum() > 4 * pop[-100:].sum()  # a Zipf head, not uniform


def test_users_lean_to_their_topic() -> None:
    data = scale.generate(2000, 1000, 40000, topics=10, seed=0)
    share = float(np.mean(data.item_topic[data.items] == data.user_topic[data.users]))
    # TOPIC_SHARE of the draws come from the user's topic, a tenth of the others by chance; without
    # structure the share would be 1/10.
    assert share == pytest.approx(scale.TOPIC_SHARE + (1 - scale.TOPIC_SHARE) / 10, abs=0.05)
    assert np.bincount(data.item_topic, minlength=10).min() == 100  # topics dealt evenly


def test_user_counts_sum_and_bounds() -> None:
    rng = np.random.default_rng(0)
    counts = scale.user_counts(rng, 1000, 20000, cap=500)
    assert counts.sum() == 20000 and counts.min() >= 3 and counts.max() <= 500
    with pytest.raises(ValueError, match="cannot be spread"):
        scale.user_counts(rng, 10, 10_000, cap=50)


def test_publish_projection_takes_the_slower_bound() -> None:
    total, compute, writes = scale.project_publish(10_000_000, users_per_shard=25_000, concurrency=8,
                                                   shard_s=30.0, item_rows=100_000)
    assert compute == pytest.approx(400 / 8 * 30 / 60)          # 50 waves of 30 s
    assert writes == pytest.approx(10_100_000 / 4000 / 60)       # the table's 4,000 writes/s
    assert total == max(compute, writes)
    fast_table, compute2, _ = scale.project_publish(10_000_000, users_per_shard=25_000, concurrency=1,
                                                   shard_s=30.0, item_rows=0)
    assert fast_table == compute2 == pytest.approx(400 * 30 / 60)
    _, _, two_units = scale.project_publish(10_000_000, users_per_shard=25_000, concurrency=8, shard_s=30.0,
                                            item_rows=0, write_units_per_row=2)
    assert two_units == pytest.approx(2 * 10_000_000 / 4000 / 60)  # a 1.5 KB row costs 2 write units


def _allocating_handler(event: dict[str, object], context: object) -> dict[str, object]:
    block = np.ones(80 * 2**20 // 8)  # 80 MB, touched
    return {"rows": int(block[:5].sum()), "kind": "users"}


def test_meter_measures_an_invocation_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    from recpipe.local import lambdas

    monkeypatch.setattr(lambdas, "load_handler", lambda dotted: _allocating_handler)
    meter = scale.Meter(concurrent=frozenset({"PublishShard"}))
    event = {"run_id": "r", "shard": {"kind": "users", "shard": 3, "start": 0, "stop": 5}}
    assert meter.wrap("Evaluate", "m.lambda_handler")({}, None) == {"rows": 5, "kind": "users"}
    meter.wrap("PublishShard", "m.lambda_handler")(event, None)
    measured, concurrent = meter.invocations
    assert measured.function == "Evaluate" and measured.increase_mb is not None
    assert 70 <= measured.increase_mb < 200  # the 80 MB block, not the whole process
    # A child run beside others is not measured; its event is kept and replayed alone.
    assert concurrent.increase_mb is None
    assert (concurrent.kind, concurrent.shard, concurrent.rows) == ("users", 3, 5)
    meter.replay("PublishShard", "m.lambda_handler", concurrent.event)
    replayed = meter.invocations[-1]
    assert replayed.replay and replayed.increase_mb is not None and replayed.increase_mb >= 70
