"""The vendored region -> registry table matches the installed sagemaker SDK."""

from __future__ import annotations

import pytest

from infra.images import IMAGES, BuiltinImage, regions, sdk_registries, vendored_registries


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.registries_key)
def test_vendored_registries_match_the_sdk(image: BuiltinImage) -> None:
    assert vendored_registries()[image.registries_key] == sdk_registries(image), (
        "The SDK's image registries changed: run `python -m infra.images --refresh`.")


def test_every_commercial_region_is_mapped() -> None:
    mapped = set(regions())
    assert {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1", "ap-southeast-2",
            "sa-east-1", "cn-north-1", "us-gov-west-1"} <= mapped
    assert len(mapped) >= 30
