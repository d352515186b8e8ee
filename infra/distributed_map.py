"""What a Distributed Map of the workflow definition needs from the state machine's role.

Read off the ASL, so that the grants follow the definition (none while it has no such Map):

* child executions: ``states:StartExecution`` on the state machine itself, and
  ``states:DescribeExecution`` / ``states:StopExecution`` on its executions (the children are
  ``execution:<machine>/<map run>:<child>``), plus ``states:RedriveExecution`` on the children so
  that redriving a run redrives its Map Run (Step Functions, "IAM policies for using Distributed
  Map states");
* ``ItemReader`` (``s3:getObject``): ``s3:GetObject`` on what it reads: a literal ``Key``, or, when
  the key comes from the state input (``Key.$``), the shard lists of the runs
  (``runs/<run id>/processed/shards/*.json``, docs/CONTRACTS.md);
* ``ResultWriter`` (``s3:putObject``): ``s3:PutObject`` (and the multipart and read actions AWS
  lists for it) under its ``Prefix``, where Step Functions writes ``<prefix>/<map run id>/...``.

The data bucket's key is granted with the objects (the bucket is SSE-KMS).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.exceptions import WiringError
from infra.nag import acknowledge, resource_finding
from infra.storage import RUNS_PREFIX, DataBucket
from recpipe.results import shards

# Where an ItemReader key taken from the state input resolves: runs/<id>/processed/shards/serve.json.
SHARD_LISTS = f"{RUNS_PREFIX}*/processed/{posixpath.dirname(shards.SERVE_SHARDS)}/"
DATA_BUCKET = "${DataBucket}"


def _states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, state in states.items():
        yield name, state
        for inner in ("ItemProcessor", "Iterator"):
            if isinstance(state.get(inner), Mapping):
                yield from _states(state[inner].get("States", {}))
        for branch in state.get("Branches", []):
            yield from _states(branch.get("States", {}))


@dataclass(frozen=True)
class DistributedMaps:
    """The DISTRIBUTED Map states of a definition and the S3 key prefixes they read and write."""

    states: tuple[str, ...] = ()
    item_sources: tuple[str, ...] = ()
    result_prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, definition_json: str) -> DistributedMaps:
        definition = json.loads(definition_json)
        names, reads, writes = [], [], []
        for name, state in _states(definition.get("States", {})):
            processor = state.get("ItemProcessor") or {}
            mode = processor.get("ProcessorConfig", {}).get("Mode")
            if state.get("Type") != "Map" or mode != "DISTRIBUTED":
                continue
            names.append(name)
            reader = (state.get("ItemReader") or {}).get("Parameters")
            if reader is not None:
                _check_bucket(name, "ItemReader", reader)
                reads.append(reader.get("Key", SHARD_LISTS))
            writer = (state.get("ResultWriter") or {}).get("Parameters")
            if writer is not None:
                _check_bucket(name, "ResultWriter", writer)
                prefix = writer.get("Prefix")
                writes.append(prefix.rstrip("/") + "/" if isinstance(prefix, str) else f"{RUNS_PREFIX}*/")
        return cls(states=tuple(names), item_sources=tuple(dict.fromkeys(reads)),
                   result_prefixes=tuple(dict.fromkeys(writes)))


def _check_bucket(state: str, field: str, parameters: Mapping[str, Any]) -> None:
    # Only the data bucket is granted; a path-valued bucket is the run's (Prepare puts the data bucket there).
    bucket = parameters.get("Bucket")
    if bucket is not None and bucket != DATA_BUCKET:
        raise WiringError(f"The Distributed Map {state!r} {field} uses bucket {bucket!r}; the stack grants "
                          f"only the data bucket ({DATA_BUCKET}).")


def grant_distributed_maps(role: iam.IRole, maps: DistributedMaps, *, state_machine_name: str,
                           data: DataBucket, scope: Construct) -> list[iam.PolicyStatement]:
    """The statements (to add to the role's policy) and the S3/KMS grants of ``maps``; nothing when
    the definition has no Distributed Map."""
    if not maps.states:
        return []
    stack = Stack.of(scope)

    def arn(resource: str, name: str) -> str:
        return stack.format_arn(service="states", resource=resource, resource_name=name,
                                arn_format=ArnFormat.COLON_RESOURCE_NAME)

    children = arn("execution", f"{state_machine_name}/*")
    executions = arn("execution", f"{state_machine_name}:*")
    statements = [
        iam.PolicyStatement(sid="DistributedMapStartChildren", actions=["states:StartExecution"],
                            resources=[arn("stateMachine", state_machine_name)]),
        iam.PolicyStatement(sid="DistributedMapExecutions",
                            actions=["states:DescribeExecution", "states:StopExecution"],
                            resources=[executions, children]),
        iam.PolicyStatement(sid="DistributedMapRedrive", actions=["states:RedriveExecution"],
                            resources=[children]),
    ]
    data.grant_prefixes(role, read=(*maps.item_sources, *maps.result_prefixes), write=maps.result_prefixes)
    data.acknowledge_prefix_grants(scope, tuple(dict.fromkeys((*maps.item_sources, *maps.result_prefixes))),
                                   "The Distributed Map (ItemReader, ResultWriter)")
    for pattern in (f"{state_machine_name}/*", f"{state_machine_name}:*"):
        acknowledge(scope, resource_finding(
            f"arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:{pattern}"),
            "The Distributed Map's child executions (and the executions they belong to) are named at run "
            "time; the wildcard is limited to this state machine's executions.")
    return statements
