"""The execution role of the SageMaker jobs (processing, training, model, batch transform).

Least privilege instead of ``AmazonSageMakerFullAccess``: objects under ``input/``, ``code/`` and
``runs/`` (write only ``runs/``), the data key, the ``/aws/sagemaker/*`` log groups (writing only to
the log streams of this stack's jobs: SageMaker names each stream after its job,
``<name prefix>-<run id>-.../algo-1-...``), the ``/aws/sagemaker/*`` metrics namespaces, and image
pulls from the built-in images' repositories only.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.images import IMAGES, BuiltinImages
from infra.nag import acknowledge, resource_finding
from infra.storage import CODE_PREFIX, INPUT_PREFIX, RUNS_PREFIX, DataBucket


class SageMakerExecutionRole(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, data: DataBucket,
                 images: BuiltinImages, name_prefix: str) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="recpipe SageMaker jobs: processing, FM and k-NN training, batch transform",
        )
        data.grant_prefixes(self.role, read=(INPUT_PREFIX, CODE_PREFIX, RUNS_PREFIX), write=(RUNS_PREFIX,))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["s3:GetBucketLocation"], resources=[data.bucket.bucket_arn]))
        log_groups = stack.format_arn(service="logs", resource="log-group", resource_name="/aws/sagemaker/*",
                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams"],
            resources=[log_groups]))
        job_streams = f"{log_groups}:log-stream:{name_prefix}-*"
        self.role.add_to_policy(iam.PolicyStatement(actions=["logs:PutLogEvents"], resources=[job_streams]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
            resources=[images.repository_arn(image) for image in IMAGES]))

        data.acknowledge_prefix_grants(self, (INPUT_PREFIX, CODE_PREFIX, RUNS_PREFIX), "A SageMaker job")
        acknowledge(self, resource_finding(_LOG_GROUPS),
                    "SageMaker creates one log group per job type under /aws/sagemaker/; the wildcard covers "
                    "those groups only.")
        acknowledge(self, resource_finding(f"{_LOG_GROUPS}:log-stream:{name_prefix}-*"),
                    f"Log streams are named after their job at run time ({name_prefix}-<run id>-...); "
                    f"limited to this stack's jobs in the /aws/sagemaker/* groups.")
        acknowledge(self, resource_finding("*"),
                    "ecr:GetAuthorizationToken and cloudwatch:PutMetricData support no resource-level "
                    "permissions; PutMetricData is limited to the /aws/sagemaker/* namespaces by a "
                    "condition.")


_LOG_GROUPS = "arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:/aws/sagemaker/*"
