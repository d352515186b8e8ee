"""The SageMaker built-in images recpipe runs, resolved for the stack's region at deploy time.

The images live in AWS-owned ECR registries whose account differs per region. The accounts are
vendored in ``image_registries.json`` (copied from the sagemaker SDK's ``image_uri_config``; the
tests check the copy against the installed SDK) and rendered as a ``CfnMapping`` keyed by region,
so one environment-agnostic template resolves ``Fn::FindInMap [.., AWS::Region, ..]`` wherever it
is deployed. Nothing here imports ``sagemaker``.

Refresh the vendored file after upgrading the SDK: ``python -m infra.images --refresh``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aws_cdk import Aws, CfnMapping, Fn
from constructs import Construct

from infra.exceptions import InfraError

REGISTRIES_FILE = Path(__file__).with_name("image_registries.json")


@dataclass(frozen=True)
class BuiltinImage:
    """One image: where its registries are listed in the SDK and how its URI is spelled."""

    attribute: str  # second-level key of the CfnMapping (alphanumeric)
    registries_key: str  # key in image_registries.json
    repository: str
    tag: str
    sdk_file: str  # file in sagemaker/image_uri_config/
    sdk_path: tuple[str, ...]  # path to the "registries" dict inside that file


FM_IMAGE = BuiltinImage(
    "FactorizationMachines", "factorization-machines", "factorization-machines", "1",
    "factorization-machines.json", ("versions", "1", "registries"),
)
KNN_IMAGE = BuiltinImage("Knn", "knn", "knn", "1", "knn.json", ("versions", "1", "registries"))
# The processing script runs on the scikit-learn framework image. 1.4-2 ships Python 3.10 (numpy 2.1,
# pyarrow 17); 1.2-1 ships Python 3.9, on which recpipe.config (PEP 604 unions at runtime) fails.
PROCESSING_IMAGE = BuiltinImage(
    "SklearnProcessing", "sklearn-1.4-2", "sagemaker-scikit-learn", "1.4-2-cpu-py3",
    "sklearn.json", ("training", "versions", "1.4-2", "registries"),
)
IMAGES: tuple[BuiltinImage, ...] = (FM_IMAGE, KNN_IMAGE, PROCESSING_IMAGE)


@cache
def vendored_registries() -> dict[str, dict[str, str]]:
    """``{registries_key: {region: account}}`` from the vendored file."""
    data = json.loads(REGISTRIES_FILE.read_text())
    return {image.registries_key: dict(data[image.registries_key]) for image in IMAGES}


def regions() -> list[str]:
    """Regions where every image recpipe needs is published (the mapping's keys)."""
    table = vendored_registries()
    common = set.intersection(*(set(table[image.registries_key]) for image in IMAGES))
    return sorted(common)


def sdk_registries(image: BuiltinImage) -> dict[str, str]:
    """The registries the installed sagemaker SDK lists for ``image`` (read as JSON, not imported)."""
    spec = importlib.util.find_spec("sagemaker")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("The sagemaker package is not installed; cannot read its image_uri_config.")
    path = Path(next(iter(spec.submodule_search_locations))) / "image_uri_config" / image.sdk_file
    node = json.loads(path.read_text())
    for part in image.sdk_path:
        node = node[part]
    return dict(sorted(node.items()))


class BuiltinImages(Construct):
    """A region -> registry-account mapping and the image URIs / repository ARNs built from it."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        table = vendored_registries()
        self.mapping = CfnMapping(
            self,
            "RegistryAccounts",
            mapping={
                region: {image.attribute: table[image.registries_key][region] for image in IMAGES}
                for region in regions()
            },
        )

    def account(self, image: BuiltinImage) -> str:
        # AWS::Region is a token in an environment-agnostic stack: this renders Fn::FindInMap.
        return self.mapping.find_in_map(Aws.REGION, image.attribute)

    def image_uri(self, image: BuiltinImage) -> str:
        """``<account>.dkr.ecr.<region>.<url suffix>/<repository>:<tag>`` (as the SDK spells it)."""
        return Fn.join(
            "",
            [self.account(image), ".dkr.ecr.", Aws.REGION, ".", Aws.URL_SUFFIX, "/",
             f"{image.repository}:{image.tag}"],
        )

    def repository_arn(self, image: BuiltinImage) -> str:
        return Fn.join(
            "",
            ["arn:", Aws.PARTITION, ":ecr:", Aws.REGION, ":", self.account(image),
             f":repository/{image.repository}"],
        )


def _refresh() -> None:
    data = {
        "_comment": json.loads(REGISTRIES_FILE.read_text())["_comment"],
        **{image.registries_key: sdk_registries(image) for image in IMAGES},
    }
    REGISTRIES_FILE.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {REGISTRIES_FILE} ({len(regions())} regions)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--refresh"]:
        sys.exit("usage: python -m infra.images --refresh")
    _refresh()
