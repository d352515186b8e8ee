"""Deploys the processing step's code tree (``workflows.processing.code_files()``: the package and
the library modules it imports, same relative paths) to ``s3://<bucket>/code/processing/``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from infra.exceptions import BundlingError
from infra.lambda_bundling import stage_tree
from infra.nag import acknowledge, acknowledge_key_grant, logical_id, resource_finding
from infra.storage import DataBucket
from workflows.definition import PROCESSING_CODE_PREFIX


def stage_files(files: Mapping[str, Path], cache_dir: Path) -> Path:
    """Copy ``{relative name: source}`` into ``<cache_dir>/processing-code/<content hash>``."""
    if not files:
        raise BundlingError("workflows.processing.code_files() returned no files to deploy.")
    contents: dict[str, bytes] = {}
    for name, source in sorted(files.items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundlingError(f"The processing code file name {name!r} must be a relative path.")
        if not Path(source).is_file():
            raise BundlingError(f"The processing code file {source} (for {name!r}) does not exist.")
        contents[name] = Path(source).read_bytes()
    return stage_tree(contents, cache_dir / "processing-code")


class ProcessingCode(Construct):
    """A ``BucketDeployment`` (no docker: the files are staged in Python) that keeps
    ``code/processing/`` equal to ``workflows.processing.code_files()`` (stale files pruned)."""

    def __init__(self, scope: Construct, construct_id: str, *, data: DataBucket, files: Mapping[str, Path],
                 cache_dir: Path) -> None:
        super().__init__(scope, construct_id)
        self.staged = stage_files(files, cache_dir)
        self.files = sorted(files)
        self.deployment = s3deploy.BucketDeployment(
            self, "Deployment",
            sources=[s3deploy.Source.asset(str(self.staged))],
            destination_bucket=data.bucket,
            destination_key_prefix=PROCESSING_CODE_PREFIX,
            prune=True,
            memory_limit=256,
        )
        self._acknowledge_findings(data)

    def _acknowledge_findings(self, data: DataBucket) -> None:
        # The copy function is CDK's own singleton (a stack-level construct owning its role).
        handler = self.deployment.handler_role.node.scope
        assert handler is not None
        reason = ("CDK's BucketDeployment custom resource (copies the staged processing code into "
                  "code/processing/ at deploy time); its permissions and runtime are CDK's.")
        acknowledge(handler, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                             "AWSLambdaBasicExecutionRole]", reason + " Only writes its own logs.")
        acknowledge(handler, "AwsSolutions-L1", reason + " The runtime is pinned by aws-cdk-lib.")
        for action in ("s3:GetBucket*", "s3:GetObject*", "s3:List*", "s3:Abort*", "s3:DeleteObject*"):
            acknowledge(handler, f"AwsSolutions-IAM5[Action::{action}]",
                        reason + " CDK's read/write grants on the asset bucket and the data bucket.")
        acknowledge(handler, resource_finding(
            "arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*"),
            reason + " Reads the staged asset from the CDK bootstrap bucket.")
        acknowledge(handler, resource_finding(f"<{logical_id(data.bucket.node.default_child)}.Arn>/*"),  # type: ignore[arg-type]
                    reason + " CDK grants the whole bucket; the deployment only writes code/processing/.")
        acknowledge_key_grant(handler, "the data bucket's key")
