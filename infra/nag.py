"""Acknowledging cdk-nag findings: every acknowledgement names the finding and says why."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct

# cdk-nag 3 reports findings through CDK's policy-validation framework under this plugin name;
# an acknowledgement id is "<plugin>::<rule>[<finding>]".
NAG_PLUGIN = "AwsSolutions"


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one finding (``"AwsSolutions-IAM5[Resource::*]"``) on ``scope`` and its children."""
    if not reason.strip():
        raise ValueError(f"The acknowledgement of {finding} needs a reason.")
    Validations.of(scope).acknowledge(Acknowledgment(id=f"{NAG_PLUGIN}::{finding}", reason=reason))


def resource_finding(resource: str) -> str:
    """The IAM5 finding id of a wildcard resource (tokens spelled ``<Logical.Attr>``, ``<AWS::Region>``)."""
    return f"AwsSolutions-IAM5[Resource::{resource}]"


def logical_id(element: IConstruct) -> str:
    """The CloudFormation logical id of an L1 resource (as cdk-nag spells references to it)."""
    stack = Stack.of(element)
    resolved: str = stack.resolve(stack.get_logical_id(element))  # type: ignore[arg-type]
    return resolved


def acknowledge_key_grant(scope: IConstruct, key_purpose: str) -> None:
    """CDK's KMS grants (encrypt/decrypt) use the ``kms:GenerateDataKey*`` and ``kms:ReEncrypt*`` families."""
    for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
        acknowledge(scope, f"AwsSolutions-IAM5[Action::{action}]",
                    f"CDK's encrypt/decrypt grant on {key_purpose}; the statement names that one key.")
