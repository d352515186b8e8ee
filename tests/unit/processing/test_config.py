"""The config schema's keys for sharding, sampling and per-algorithm resources (recpipe/config.py)."""

from __future__ import annotations

import pytest

from recpipe import config as cfg


def test_defaults_of_the_sharding_sampling_and_resource_keys() -> None:
    defaults = cfg.defaults()
    assert defaults["processing.users_per_shard"] == 25_000
    assert defaults["evaluation.sample_users"] == 50_000
    assert defaults["resources.fm_instance_type"] == "ml.m5.xlarge"
    assert defaults["resources.fm_instance_count"] == 1
    assert defaults["resources.knn_instance_type"] == "ml.m5.xlarge"
    assert defaults["publish.max_concurrency"] == 8
    assert defaults["publish.similar_items"] == 20


@pytest.mark.parametrize("key", [
    "processing.context_split_ratings", "processing.context_gap", "processing.recent_fraction",
    "transform.user_shards", "resources.training_instance_type", "resources.training_instance_count",
])
def test_retired_keys_are_unknown(key: str) -> None:
    with pytest.raises(cfg.ConfigError, match=f"unknown key '{key}'"):
        cfg.validate({key: 1})


@pytest.mark.parametrize("instance_type", ["ml.p3.2xlarge", "ml.g4dn.xlarge", "ml.g5.2xlarge"])
def test_fm_on_gpu_is_refused_with_the_reason(instance_type: str) -> None:
    with pytest.raises(cfg.ConfigError, match=(
            f"'resources.fm_instance_type' must not be '{instance_type}': FM trains on GPU only for "
            r"dense data; recpipe's FM data is sparse: use a CPU type such as ml.m5.xlarge")):
        cfg.validate({"resources": {"fm_instance_type": instance_type}})


def test_cpu_types_are_accepted_for_fm_and_any_type_for_knn() -> None:
    assert cfg.validate({"resources.fm_instance_type": "ml.c5.2xlarge"}) == {
        "resources.fm_instance_type": "ml.c5.2xlarge"}
    assert cfg.validate({"resources.knn_instance_type": "ml.p3.2xlarge"})  # k-NN has a GPU build


@pytest.mark.parametrize(("key", "value", "message"), [
    ("processing.users_per_shard", 0, r"'processing.users_per_shard' must be in \[1, inf\], got 0"),
    ("evaluation.sample_users", 0, r"'evaluation.sample_users' must be in \[1, inf\], got 0"),
    ("resources.fm_instance_count", 21, r"'resources.fm_instance_count' must be in \[1, 20\], got 21"),
    ("publish.max_concurrency", 1001, r"'publish.max_concurrency' must be in \[1, 1000\], got 1001"),
    ("publish.similar_items", -1, r"'publish.similar_items' must be in \[0, 100\], got -1"),
    ("resources.fm_instance_count", 1.5, "'resources.fm_instance_count' must be an integer, got 1.5"),
])
def test_ranges(key: str, value: object, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.validate({key: value})
