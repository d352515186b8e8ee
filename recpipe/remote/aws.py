"""Find the deployed stack's resources and executions with the default boto3 credentials.

* :func:`resolve_target`: the results table and state machine ARN, taken from ``--table`` /
  ``--state-machine-arn`` when given, otherwise from the CloudFormation stack's outputs
  (``TableName``, ``StateMachineArn``, written by ``infra/stack.py``; stack ``Recpipe`` unless
  ``--stack`` names another). The stack is read only when something is missing.
* :func:`find_execution`: an execution ARN from a run id, an execution name or an ARN. A run id is
  the execution name when that name is a valid run id (``recpipe.runs.derive_run_id``), so the
  execution is found with one ``DescribeExecution``; otherwise the state machine's executions are
  listed (newest first) and the one whose name derives to that run id is taken.
* :func:`aws_errors`: botocore errors -> :class:`~recpipe.remote.exceptions.AwsAccessError` naming
  the call and the resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from recpipe.remote.exceptions import AwsAccessError, ExecutionNotFoundError, StackOutputsError

# The stack's default name and the outputs the CLI reads: infra (settings.py, stack.py) uses these.
DEFAULT_STACK = "Recpipe"
TABLE_OUTPUT = "TableName"
STATE_MACHINE_OUTPUT = "StateMachineArn"
BUCKET_OUTPUT = "BucketName"
# Executions looked at when a run id is not an execution name (newest first).
MAX_LISTED_EXECUTIONS = 2000

ClientFactory = Callable[[str, str | None], Any]


def boto3_client(service: str, region: str | None) -> Any:
    """A boto3 client with the default credential chain; ``region=None`` uses the configured one."""
    import boto3

    with aws_errors(f"creating a {service} client"):
        return boto3.client(service, region_name=region)  # type: ignore[call-overload]


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Turn botocore's errors raised inside into :class:`AwsAccessError` saying ``what`` failed."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoRegionError as exc:
        raise AwsAccessError(f"No AWS region for {what}: pass --region or set AWS_REGION.") from exc
    except NoCredentialsError as exc:
        raise AwsAccessError(f"No AWS credentials for {what}: configure them (aws configure, AWS_PROFILE "
                             "or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables).") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AwsAccessError(f"AWS refused {what}: {error.get('Code', '?')}: "
                             f"{error.get('Message', exc)}") from exc
    except BotoCoreError as exc:
        raise AwsAccessError(f"AWS call failed while {what}: {exc}") from exc


def region_of_arn(arn: str | None) -> str | None:
    """``arn:aws:states:eu-west-1:...`` -> ``eu-west-1``; None when ``arn`` is not an ARN."""
    if not arn or not arn.startswith("arn:"):
        return None
    parts = arn.split(":")
    return (parts[3] or None) if len(parts) > 3 else None


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    """``{OutputKey: OutputValue}`` of ``stack``; :class:`StackOutputsError` when it does not exist."""
    from botocore.exceptions import ClientError

    with aws_errors(f"reading the outputs of the CloudFormation stack '{stack}'"):
        try:
            response = cloudformation.describe_stacks(StackName=stack)
        except ClientError as exc:
            if "does not exist" in str(exc.response.get("Error", {}).get("Message", "")):
                raise StackOutputsError(
                    f"The CloudFormation stack '{stack}' does not exist in this account and region: pass "
                    "--stack NAME (and --region), or name the resources with --table / --state-machine-arn."
                ) from exc
            raise
    stacks = response.get("Stacks") or []
    if not stacks:
        raise StackOutputsError(f"The CloudFormation stack '{stack}' was not found.")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs") or []
            if "OutputKey" in o and "OutputValue" in o}


@dataclass(frozen=True)
class AwsTarget:
    """Where a command acts on AWS."""

    region: str | None
    table: str | None
    state_machine_arn: str | None
    stack: str | None  # the stack read for the missing names, or None when none was read


def resolve_target(*, table: str | None = None, state_machine_arn: str | None = None,
                   stack: str | None = None, region: str | None = None, need_table: bool = False,
                   need_state_machine: bool = False, want_state_machine: bool = False,
                   client: ClientFactory | None = None) -> AwsTarget:
    """The table and state machine a command needs.

    Names given explicitly win. The stack (``stack`` or :data:`DEFAULT_STACK`) is read when a
    needed name is missing, or when ``stack`` is given and a wanted one is missing. The region is
    ``region``, else the state machine ARN's, else boto3's default. ``client(service, region)``
    makes the CloudFormation client (default :func:`boto3_client`).
    """
    region = region or region_of_arn(state_machine_arn)
    missing_needed = (need_table and not table) or (need_state_machine and not state_machine_arn)
    missing_wanted = want_state_machine and not state_machine_arn and stack is not None
    read_stack: str | None = None
    if missing_needed or missing_wanted:
        read_stack = stack or DEFAULT_STACK
        factory = client or boto3_client
        outputs = stack_outputs(factory("cloudformation", region), read_stack)
        if need_table and not table:
            table = _output(outputs, read_stack, TABLE_OUTPUT, "--table")
        if (need_state_machine or want_state_machine) and not state_machine_arn:
            if need_state_machine:
                state_machine_arn = _output(outputs, read_stack, STATE_MACHINE_OUTPUT, "--state-machine-arn")
            else:
                state_machine_arn = outputs.get(STATE_MACHINE_OUTPUT)
        region = region or region_of_arn(state_machine_arn)
    return AwsTarget(region=region, table=table, state_machine_arn=state_machine_arn, stack=read_stack)


def _output(outputs: dict[str, str], stack: str, key: str, option: str) -> str:
    value = outputs.get(key)
    if not value:
        known = ", ".join(sorted(outputs)) or "none"
        raise StackOutputsError(f"The CloudFormation stack '{stack}' has no output '{key}' (its outputs: "
                                f"{known}): is it a recpipe stack? Pass {option} instead.")
    return value


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution ``name`` of a standard state machine."""
    if ":stateMachine:" not in state_machine_arn:
        raise ExecutionNotFoundError(f"'{state_machine_arn}' is not a state machine ARN "
                                     "(arn:aws:states:<region>:<account>:stateMachine:<name>).")
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name


def _exists(sfn: Any, arn: str) -> bool:
    try:
        sfn.describe_execution(executionArn=arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        return False
    return True


def find_execution(sfn: Any, ref: str | None, state_machine_arn: str | None) -> str:
    """The execution ARN for ``ref`` (an execution ARN, an execution name, a run id, or None for the
    newest execution of ``state_machine_arn``)."""
    from recpipe.runs import derive_run_id

    if ref and ref.startswith("arn:"):
        if ":execution:" not in ref:
            raise ExecutionNotFoundError(f"'{ref}' is not an execution ARN "
                                         "(arn:aws:states:<region>:<account>:execution:<machine>:<name>).")
        with aws_errors(f"describing the execution {ref}"):
            if not _exists(sfn, ref):
                raise ExecutionNotFoundError(f"The execution {ref} does not exist.")
        return ref
    if not state_machine_arn:
        raise ExecutionNotFoundError("Finding an execution by run id needs the state machine: pass "
                                     "--state-machine-arn ARN or --stack NAME, or give the execution ARN.")
    with aws_errors(f"looking up executions of {state_machine_arn}"):
        if ref:
            direct = execution_arn(state_machine_arn, ref)
            if _exists(sfn, direct):
                return direct
        seen: list[str] = []
        paginator = sfn.get_paginator("list_executions")
        for page in paginator.paginate(stateMachineArn=state_machine_arn,
                                       PaginationConfig={"MaxItems": MAX_LISTED_EXECUTIONS}):
            for execution in page.get("executions", []):
                name = str(execution["name"])
                if ref is None or ref in (name, derive_run_id(name)):
                    return str(execution["executionArn"])
                seen.append(name)
    if ref is None:
        raise ExecutionNotFoundError(f"The state machine {state_machine_arn} has no executions yet.")
    latest = ", ".join(seen[:5]) or "none"
    raise ExecutionNotFoundError(f"No execution of {state_machine_arn} has run id or name '{ref}' (among "
                                 f"the newest {len(seen)}; latest: {latest}).")


def execution_status(sfn: Any, state_machine_arn: str, execution_name: str) -> str | None:
    """``RUNNING``, ``SUCCEEDED``, ... of the named execution; None when it does not exist."""
    arn = execution_arn(state_machine_arn, execution_name)
    with aws_errors(f"describing the execution {arn}"):
        try:
            return str(sfn.describe_execution(executionArn=arn)["status"])
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
