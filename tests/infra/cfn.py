"""A small evaluator of the CloudFormation intrinsics CDK emits, for checking templates offline.

Resources resolve to recognisable fake values: ``Ref`` -> ``ref:<LogicalId>``, ``Fn::GetAtt`` ->
``arn:<LogicalId>:<Attribute>``; pseudo parameters to the given region/account.
"""

from __future__ import annotations

import re
from typing import Any

ACCOUNT = "123456789012"


class Resolver:
    def __init__(self, template: dict[str, Any], *, region: str, account: str = ACCOUNT) -> None:
        self.template = template
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws-cn" if region.startswith("cn-") else "aws",
            "AWS::URLSuffix": "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com",
            "AWS::StackName": "Recpipe",
        }

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return self.pseudo.get(value, f"ref:{value}")
            if key == "Fn::GetAtt":
                logical, attribute = value if isinstance(value, list) else value.split(".", 1)
                return f"arn:{logical}:{attribute}"
            if key == "Fn::Join":
                separator, parts = value
                return separator.join(str(self(part)) for part in parts)
            if key == "Fn::FindInMap":
                name, first, second = (self(v) for v in value)
                return self.template["Mappings"][name][first][second]
            if key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                values = {**self.pseudo, **{k: self(v) for k, v in variables.items()}}
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(values.get(m.group(1), f"ref:{m.group(1)}")),
                              text)
        return {key: self(value) for key, value in node.items()}


def substitute(text: str, values: dict[str, str]) -> str:
    """Step Functions' ``DefinitionSubstitutions``: every ``${Name}`` replaced by its value."""
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values[m.group(1)], text)


def statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The statements of an ``AWS::IAM::Policy`` (or a role's inline policies)."""
    props = resource["Properties"]
    if "PolicyDocument" in props:
        return list(props["PolicyDocument"]["Statement"])
    found: list[dict[str, Any]] = []
    for policy in props.get("Policies", []):
        found.extend(policy["PolicyDocument"]["Statement"])
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
