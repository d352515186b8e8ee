"""Every property of the deployable stack, proved on the synthesized template (no AWS account)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from recpipe import config as cfg
from recpipe import tables
from tests.infra.cfn import Resolver, as_list, statements, substitute
from tests.infra.conftest import ALERT_EMAIL, Synth

ROOT = Path(__file__).resolve().parents[2]
CONTEXT: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]


def _policies_of(synth: Synth, role_logical_id: str) -> list[dict[str, Any]]:
    found = []
    for resource in synth.of_type("AWS::IAM::Policy").values():
        if {"Ref": role_logical_id} in resource["Properties"].get("Roles", []):
            found.extend(statements(resource))
    found.extend(statements(synth.resources[role_logical_id]))
    return found


def _role_assumed_by(synth: Synth, service: str) -> list[str]:
    return [k for k, r in synth.of_type("AWS::IAM::Role").items()
            if any(as_list(s["Principal"].get("Service")) == [service]
                   for s in r["Properties"]["AssumeRolePolicyDocument"]["Statement"])]


def _only_role(synth: Synth, service: str) -> str:
    roles = _role_assumed_by(synth, service)
    assert len(roles) == 1, roles
    return roles[0]


def _data_bucket(synth: Synth) -> str:
    (logical,) = [k for k, r in synth.of_type("AWS::S3::Bucket").items()
                  if "LoggingConfiguration" in r["Properties"]]
    return logical


def _functions(synth: Synth) -> dict[str, tuple[str, dict[str, Any]]]:
    """handler -> (logical id, properties) of the pipeline's functions (not CDK's own, not the read
    API's: tests/infra/test_api.py)."""
    from infra.api import HANDLER as API_HANDLER

    return {r["Properties"]["Handler"]: (k, r["Properties"])
            for k, r in synth.of_type("AWS::Lambda::Function").items()
            if r["Properties"]["Handler"].startswith("lambdas.")
            and r["Properties"]["Handler"] != API_HANDLER}


# --- data bucket -----------------------------------------------------------------------------------

def test_data_bucket_is_encrypted_private_logged_and_tls_only(synth: Synth) -> None:
    bucket = _data_bucket(synth)
    props = synth.resources[bucket]["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key = rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
    assert synth.resources[key]["Properties"]["EnableKeyRotation"] is True
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    log_bucket = props["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    assert log_bucket != bucket
    log_props = synth.resources[log_bucket]["Properties"]
    assert log_props["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
    assert log_props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"  # logs cannot go to SSE-KMS
    for logical in (bucket, log_bucket):
        policy = next(p for p in synth.of_type("AWS::S3::BucketPolicy").values()
                      if p["Properties"]["Bucket"] == {"Ref": logical})
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in statements(policy)), logical


def test_data_bucket_lifecycle_expires_runs_and_aborts_uploads(synth: Synth) -> None:
    rules = {r["Id"]: r for r in
             synth.resources[_data_bucket(synth)]["Properties"]["LifecycleConfiguration"]["Rules"]}
    runs = rules["ExpireRuns"]
    assert runs["Prefix"] == "runs/"
    assert runs["ExpirationInDays"] == CONTEXT["recpipe:runRetentionDays"]
    assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "Prefix" not in rules["AbortIncompleteUploads"]


def test_processing_code_is_deployed_under_code_processing(synth: Synth) -> None:
    from workflows.processing import code_files

    _, deployment = synth.one("Custom::CDKBucketDeployment")
    assert deployment["Properties"]["DestinationBucketKeyPrefix"] == "code/processing/"
    assert deployment["Properties"]["Prune"] is True
    staged = synth.stack.processing_code.staged
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == \
        sorted(code_files())


# --- results table -------------------------------------------------------------------------------

def test_results_table_schema_recovery_encryption_ttl(synth: Synth) -> None:
    _, table = synth.one("AWS::DynamoDB::Table")
    props = table["Properties"]
    expected = tables.create_table_kwargs("any")
    assert props["KeySchema"] == expected["KeySchema"]
    assert props["AttributeDefinitions"] == expected["AttributeDefinitions"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": tables.TTL_ATTRIBUTE, "Enabled": True}
    assert table["DeletionPolicy"] == "Retain"


def test_retained_resources_have_no_fixed_name(synth: Synth) -> None:
    # The table and both buckets outlive `cdk destroy`; a fixed physical name would make the next
    # deploy fail with "already exists". CloudFormation names them; the outputs carry the names.
    retained = {k: r for k, r in synth.resources.items() if r.get("DeletionPolicy") == "Retain"}
    assert {r["Type"] for r in retained.values()} >= {"AWS::DynamoDB::Table", "AWS::S3::Bucket"}
    named = {"AWS::DynamoDB::Table": "TableName", "AWS::S3::Bucket": "BucketName",
             "AWS::KMS::Key": "KeyName", "AWS::Logs::LogGroup": "LogGroupName"}
    for logical, resource in retained.items():
        assert resource["Type"] in named, (logical, resource["Type"])  # a new kind: decide its name
        # A literal name is fixed; one made from a generated name (CDK's own deployment function's
        # log group, "/aws/lambda/<function Ref>") is new on every deploy.
        name = resource["Properties"].get(named[resource["Type"]])
        assert name is None or "Ref" in json.dumps(name), (logical, name)
    assert not synth.of_type("AWS::KMS::Alias")


# --- Lambdas -------------------------------------------------------------------------------------

def test_one_function_per_definition_handler_with_layer_and_env(synth: Synth) -> None:
    from workflows.definition import FUNCTIONS

    functions = _functions(synth)
    assert sorted(functions) == sorted(FUNCTIONS.values())
    (layer,) = synth.of_type("AWS::Lambda::LayerVersion").keys() - {
        k for k in synth.of_type("AWS::Lambda::LayerVersion") if "AwsCliLayer" in k}
    code_keys = set()
    for handler, (_, props) in functions.items():
        assert props["Runtime"] == "python3.12", handler
        assert props["Architectures"] == ["x86_64"]
        assert props["Layers"] == [{"Ref": layer}]
        assert props["TracingConfig"] == {"Mode": "Active"}
        env = props["Environment"]["Variables"]
        assert env[tables.TABLE_ENV] == {"Ref": synth.one("AWS::DynamoDB::Table")[0]}
        assert env[tables.BUCKET_ENV] == {"Ref": _data_bucket(synth)}
        code_keys.add(props["Code"]["S3Key"])
    assert len(code_keys) == 1, "all functions share one code asset"


def test_every_function_fits_a_new_accounts_memory_quota(synth: Synth) -> None:
    # CloudFormation refuses MemorySize > 3008 on an account with the reduced quota of new accounts
    # and rolls the whole stack back; more is opt-in (recpipe:functionMemoryMb).
    from workflows.definition import FUNCTIONS

    sizes = {handler: props["MemorySize"] for handler, (_, props) in _functions(synth).items()}
    assert set(sizes) == set(FUNCTIONS.values())
    assert all(128 <= mb <= 3008 for mb in sizes.values()), sizes
    _, repackage = _functions(synth)[FUNCTIONS["Repackage"]]
    assert repackage["MemorySize"] == 3008
    assert repackage["Timeout"] == 900
    # Every other function of the stack too (the read API's, CDK's own deployment helper).
    every = {k: r["Properties"].get("MemorySize", 128)
             for k, r in synth.of_type("AWS::Lambda::Function").items()}
    assert all(mb <= 3008 for mb in every.values()), every


def test_prepare_gets_the_deploy_time_defaults(synth: Synth) -> None:
    from infra.functions import DEFAULTS_ENV as INFRA_DEFAULTS_ENV
    from lambdas.prepare.prepare import DEFAULTS_ENV, deploy_defaults
    from workflows.definition import FUNCTIONS

    assert INFRA_DEFAULTS_ENV == DEFAULTS_ENV
    _, props = _functions(synth)[FUNCTIONS["Prepare"]]
    raw = props["Environment"]["Variables"][DEFAULTS_ENV]
    assert deploy_defaults(raw) == cfg.validate(CONTEXT["recpipe:pipelineDefaults"])


def test_prepare_names_jobs_with_the_stacks_prefix(synth: Synth) -> None:
    from recpipe.runs import JOB_PREFIX_ENV
    from workflows.definition import FUNCTIONS

    functions = _functions(synth)
    _, prepare = functions[FUNCTIONS["Prepare"]]
    assert prepare["Environment"]["Variables"][JOB_PREFIX_ENV] == CONTEXT["recpipe:namePrefix"]
    assert all(JOB_PREFIX_ENV not in props["Environment"]["Variables"]
               for handler, (_, props) in functions.items() if handler != FUNCTIONS["Prepare"])


def _s3_grants(synth: Synth, handler: str) -> dict[str, set[str]]:
    """action -> object key patterns (``runs/*``) the function's role may use it on."""
    bucket = _data_bucket(synth)
    resolve = Resolver(synth.template, region="eu-west-1")
    role = _functions(synth)[handler][1]["Role"]["Fn::GetAtt"][0]
    grants: dict[str, set[str]] = {}
    for statement in _policies_of(synth, role):
        for action in as_list(statement["Action"]):
            if action.startswith("s3:"):
                grants.setdefault(action, set()).update(
                    resolve(r).removeprefix(f"arn:{bucket}:Arn/") for r in as_list(statement["Resource"]))
    return grants


def _table_actions(synth: Synth, handler: str) -> set[str]:
    table = synth.one("AWS::DynamoDB::Table")[0]
    role = _functions(synth)[handler][1]["Role"]["Fn::GetAtt"][0]
    return {a for s in _policies_of(synth, role) if table in json.dumps(s["Resource"])
            for a in as_list(s["Action"]) if a.startswith("dynamodb:")}


@pytest.mark.parametrize(("name", "writes"), [("PublishShard", {"runs/*/publish/*"}), ("Commit", set())])
def test_publish_map_functions_have_exact_grants(synth: Synth, name: str, writes: set[str]) -> None:
    # A Publish child reads the run's artifacts, writes its rows (and reads the pointer as it begins
    # the version) and its report under runs/<id>/publish/; Commit reads the shard list and reports
    # and writes the version and pointer items.
    from workflows.definition import FUNCTIONS

    if name not in FUNCTIONS:
        pytest.skip(f"{name} is not in workflows.definition.FUNCTIONS yet")
    grants = _s3_grants(synth, FUNCTIONS[name])
    assert grants["s3:GetObject"] == {"runs/*"}
    assert grants.get("s3:PutObject", set()) == writes
    assert not any(a.startswith("s3:Delete") for a in grants)
    actions = _table_actions(synth, FUNCTIONS[name])
    assert {"dynamodb:GetItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem", "dynamodb:PutItem"} \
        <= actions


def test_repackage_may_delete_stale_shards_under_runs_only(synth: Synth) -> None:
    from workflows.definition import FUNCTIONS

    bucket = _data_bucket(synth)
    role = _functions(synth)[FUNCTIONS["Repackage"]][1]["Role"]["Fn::GetAtt"][0]
    deletes = [s for s in _policies_of(synth, role) if "s3:DeleteObject" in as_list(s["Action"])]
    assert len(deletes) == 1
    (statement,) = deletes
    assert statement["Effect"] == "Allow" and "Condition" not in statement
    assert statement["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/runs/*"]]}
    assert _s3_grants(synth, FUNCTIONS["Repackage"])["s3:DeleteObject"] == {"runs/*"}
    others = [h for h in _functions(synth) if h != FUNCTIONS["Repackage"]
              and any(a.startswith("s3:Delete") for a in _s3_grants(synth, h))]
    assert others == []


def test_function_roles_are_scoped(synth: Synth) -> None:
    bucket = _data_bucket(synth)
    for handler, (_, props) in _functions(synth).items():
        role = props["Role"]["Fn::GetAtt"][0]
        assert not synth.resources[role]["Properties"].get("ManagedPolicyArns"), handler
        for statement in _policies_of(synth, role):
            for resource in as_list(statement["Resource"]):
                text = json.dumps(resource)
                if bucket in text and "/" in text:  # object ARNs: a prefix, never the whole bucket
                    assert any(f'"/{p}' in text for p in ("input/", "runs/")), (handler, text)


# --- SageMaker execution role --------------------------------------------------------------------

def test_sagemaker_role_is_least_privilege(synth: Synth) -> None:
    role = _only_role(synth, "sagemaker.amazonaws.com")
    assert not synth.resources[role]["Properties"].get("ManagedPolicyArns")
    bucket = _data_bucket(synth)
    resolve = Resolver(synth.template, region="eu-west-1")
    reads, writes, actions = set(), set(), set()
    for statement in _policies_of(synth, role):
        assert statement["Effect"] == "Allow"
        acts = set(as_list(statement["Action"]))
        actions |= acts
        assert not any(a.endswith(":*") or a == "*" for a in acts), acts
        resources = [resolve(r) for r in as_list(statement["Resource"])]
        if "s3:GetObject" in acts:
            reads |= {r.removeprefix(f"arn:{bucket}:Arn") for r in resources}
        if "s3:PutObject" in acts:
            writes |= {r.removeprefix(f"arn:{bucket}:Arn") for r in resources}
        if "s3:ListBucket" in acts:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == ["code/*", "input/*", "runs/*"]
        if any(a.startswith("logs:") for a in acts):
            assert all(":log-group:/aws/sagemaker/" in r for r in resources), resources
        if "ecr:BatchGetImage" in acts:
            assert sorted(resources) == sorted([
                "arn:aws:ecr:eu-west-1:438346466558:repository/factorization-machines",
                "arn:aws:ecr:eu-west-1:438346466558:repository/knn",
                "arn:aws:ecr:eu-west-1:141502667606:repository/sagemaker-scikit-learn"])
        if resources == ["*"]:
            assert acts <= {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}, acts
            if "cloudwatch:PutMetricData" in acts:
                assert statement["Condition"] == {
                    "StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}
    assert reads == {"/input/*", "/code/*", "/runs/*"}
    assert writes == {"/runs/*"}
    assert not actions & {"s3:DeleteObject", "s3:PutBucketPolicy", "iam:PassRole"}


# --- state machine -------------------------------------------------------------------------------

def _state_machine(synth: Synth) -> tuple[str, dict[str, Any]]:
    logical, resource = synth.one("AWS::StepFunctions::StateMachine")
    return logical, resource["Properties"]


def test_deployed_definition_is_the_workflow_asl_with_substitutions(synth: Synth) -> None:
    from sagemaker import image_uris

    from workflows.definition import FUNCTIONS, PLACEHOLDERS, definition_json

    _, props = _state_machine(synth)
    assert props["DefinitionString"] == definition_json()
    assert set(props["DefinitionSubstitutions"]) == set(PLACEHOLDERS)

    region = "eu-west-1"
    resolve = Resolver(synth.template, region=region)
    deployed = json.loads(substitute(props["DefinitionString"],
                                     {k: resolve(v) for k, v in props["DefinitionSubstitutions"].items()}))
    # Independently computed: the values each placeholder must take in eu-west-1.
    functions = _functions(synth)
    expected_values = {
        "SageMakerRoleArn": f"arn:{_only_role(synth, 'sagemaker.amazonaws.com')}:Arn",
        "DataBucket": f"ref:{_data_bucket(synth)}",
        "FmImageUri": image_uris.retrieve("factorization-machines", region),
        "KnnImageUri": image_uris.retrieve("knn", region),
        "ProcessingImageUri": image_uris.retrieve("sklearn", region, version="1.4-2"),
        **{f"{name}FunctionArn": f"arn:{functions[handler][0]}:Arn" for name, handler in FUNCTIONS.items()},
    }
    assert deployed == json.loads(substitute(definition_json(), expected_values))
    assert "${" not in json.dumps(deployed)


@pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"])
def test_image_uris_resolve_per_region_at_deploy_time(synth: Synth, region: str) -> None:
    from sagemaker import image_uris

    _, props = _state_machine(synth)
    subs = props["DefinitionSubstitutions"]
    assert "Fn::FindInMap" in json.dumps(subs["FmImageUri"])  # not resolved at synth time
    resolve = Resolver(synth.template, region=region)
    assert resolve(subs["FmImageUri"]) == image_uris.retrieve("factorization-machines", region)
    assert resolve(subs["KnnImageUri"]) == image_uris.retrieve("knn", region)
    assert resolve(subs["ProcessingImageUri"]) == image_uris.retrieve("sklearn", region, version="1.4-2")


def test_state_machine_logs_all_and_traces(synth: Synth) -> None:
    _, props = _state_machine(synth)
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is True
    assert props["TracingConfiguration"] == {"Enabled": True}
    group = props["LoggingConfiguration"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
    assert synth.resources[group["Fn::GetAtt"][0]]["Properties"]["RetentionInDays"] == \
        CONTEXT["recpipe:logRetentionDays"]


def test_state_machine_policy_is_exactly_what_the_integrations_need(synth: Synth) -> None:
    _, props = _state_machine(synth)
    role = props["RoleArn"]["Fn::GetAtt"][0]
    resolve = Resolver(synth.template, region="eu-west-1")
    granted: dict[str, set[str]] = {}
    for statement in _policies_of(synth, role):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            granted.setdefault(action, set()).update(resolve(r) for r in as_list(statement["Resource"]))
    arn = "arn:aws:sagemaker:eu-west-1:123456789012"
    jobs = f"{CONTEXT['recpipe:namePrefix']}-*"  # the stack's job-name prefix (RECPIPE_JOB_PREFIX)
    for kind, name in (("training-job", "TrainingJob"), ("processing-job", "ProcessingJob"),
                       ("transform-job", "TransformJob")):
        for verb in ("Create", "Describe", "Stop"):
            assert granted.pop(f"sagemaker:{verb}{name}") == {f"{arn}:{kind}/{jobs}"}
    assert granted.pop("sagemaker:CreateModel") == {f"{arn}:model/{jobs}"}
    # As in AWS's policy template for the .sync SageMaker integrations.
    assert granted.pop("sagemaker:ListTags") == {"*"}
    assert granted.pop("iam:PassRole") == {f"arn:{_only_role(synth, 'sagemaker.amazonaws.com')}:Arn"}
    rules = {f"arn:aws:events:eu-west-1:123456789012:rule/StepFunctionsGetEventsForSageMaker{k}JobsRule"
             for k in ("Training", "Processing", "Transform")}
    for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
        assert granted.pop(action) == rules
    assert granted.pop("lambda:InvokeFunction") == {f"arn:{k}:Arn" for k, _ in _functions(synth).values()}
    _pop_distributed_map_grants(synth, granted)
    # What CDK adds for logging level ALL and X-Ray: actions without resource-level permissions.
    for action, resources in granted.items():
        assert action.startswith(("logs:", "xray:")), action
        assert resources == {"*"}, action


def _pop_distributed_map_grants(synth: Synth, granted: dict[str, set[str]]) -> None:
    """The Distributed Map's grants (AWS's documented ones), present exactly when the ASL has one."""
    from infra.distributed_map import DistributedMaps

    maps = DistributedMaps.of(_state_machine(synth)[1]["DefinitionString"])
    actions = {"states:StartExecution", "states:DescribeExecution", "states:StopExecution",
               "states:RedriveExecution"}
    if not maps.states:
        assert not actions & set(granted) and "s3:GetObject" not in granted
        return
    machine = f"{CONTEXT['recpipe:namePrefix']}-pipeline"
    states = "arn:aws:states:eu-west-1:123456789012"
    assert granted.pop("states:StartExecution") == {f"{states}:stateMachine:{machine}"}
    for action in ("states:DescribeExecution", "states:StopExecution"):
        assert granted.pop(action) == {f"{states}:execution:{machine}:*", f"{states}:execution:{machine}/*"}
    assert granted.pop("states:RedriveExecution") == {f"{states}:execution:{machine}/*"}
    bucket = f"arn:{_data_bucket(synth)}:Arn/"
    results = {f"{bucket}{p}*" for p in maps.result_prefixes}
    assert granted.pop("s3:GetObject") == {f"{bucket}{p}*" for p in maps.item_sources} | results
    for action in ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"):
        assert granted.pop(action) == results
    assert granted.pop("s3:ListBucket") == {f"arn:{_data_bucket(synth)}:Arn"}
    key = {f"arn:{k}:Arn" for k in synth.of_type("AWS::KMS::Key")}
    for action in [a for a in granted if a.startswith("kms:")]:
        assert granted.pop(action) <= key, action
    # What the ResultWriter writes outside runs/ expires with the runs.
    rules = synth.resources[_data_bucket(synth)]["Properties"]["LifecycleConfiguration"]["Rules"]
    for prefix in maps.result_prefixes:
        assert any(r.get("Prefix") == prefix and r["ExpirationInDays"] == CONTEXT["recpipe:runRetentionDays"]
                   for r in rules), prefix


def test_pass_role_is_scoped_to_sagemaker(synth: Synth) -> None:
    passes = [s for r in synth.of_type("AWS::IAM::Policy").values() for s in statements(r)
              if "iam:PassRole" in as_list(s["Action"])]
    assert len(passes) == 1
    (statement,) = passes
    assert as_list(statement["Action"]) == ["iam:PassRole"]
    assert statement["Resource"] == {"Fn::GetAtt": [_only_role(synth, "sagemaker.amazonaws.com"), "Arn"]}
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_no_wildcard_action_on_wildcard_resource(synth: Synth) -> None:
    # Statements on "*" may only hold actions that support no resource-level permissions.
    allowed_on_star = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "sagemaker:ListTags",
                       "xray:PutTraceSegments",
                       "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets",
                       "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                       "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                       "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"}
    for logical, resource in synth.of_type("AWS::IAM::Policy").items():
        for statement in statements(resource):
            actions = as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (logical, actions)
            if "*" in as_list(statement["Resource"]):
                assert set(actions) <= allowed_on_star, (logical, actions)
    for logical, role in synth.of_type("AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "FullAccess" not in managed and "AdministratorAccess" not in managed, logical


# --- schedule and alerts --------------------------------------------------------------------------

def test_schedule_starts_the_pipeline_on_the_configured_cron(synth: Synth) -> None:
    machine, _ = _state_machine(synth)
    _, schedule = synth.one("AWS::Scheduler::Schedule")
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == CONTEXT["recpipe:scheduleExpression"]
    assert props["ScheduleExpressionTimezone"] == CONTEXT["recpipe:scheduleTimeZone"]
    assert props["State"] == ("ENABLED" if CONTEXT["recpipe:scheduleEnabled"] else "DISABLED")
    assert props["Target"]["Arn"] == {"Ref": machine}
    assert json.loads(props["Target"]["Input"]) == CONTEXT["recpipe:scheduleInput"]
    role = props["Target"]["RoleArn"]["Fn::GetAtt"][0]
    assert _policies_of(synth, role) == [
        {"Action": "states:StartExecution", "Effect": "Allow", "Resource": {"Ref": machine}}]
    trust = synth.resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_failed_executions_notify_the_encrypted_topic(synth: Synth) -> None:
    machine, _ = _state_machine(synth)
    topic, resource = synth.one("AWS::SNS::Topic")
    key = resource["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key_statements = synth.resources[key]["Properties"]["KeyPolicy"]["Statement"]
    services = {svc for s in key_statements for svc in as_list(s["Principal"].get("Service", []))}
    assert {"events.amazonaws.com", "cloudwatch.amazonaws.com"} <= services
    synth.assertions.has_resource_properties("AWS::SNS::Subscription", {
        "Protocol": "email", "Endpoint": ALERT_EMAIL, "TopicArn": {"Ref": topic}})
    synth.assertions.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {
            "source": ["aws.states"],
            "detail-type": ["Step Functions Execution Status Change"],
            "detail": {"status": ["FAILED", "TIMED_OUT", "ABORTED"], "stateMachineArn": [{"Ref": machine}]},
        },
        "Targets": [Match.object_like({"Arn": {"Ref": topic}})],
    })
    synth.assertions.has_resource_properties("AWS::CloudWatch::Alarm", {
        "Namespace": "AWS/States", "MetricName": "ExecutionsFailed",
        "Dimensions": [{"Name": "StateMachineArn", "Value": {"Ref": machine}}],
        "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": [{"Ref": topic}],
    })
    topic_policy = next(iter(synth.of_type("AWS::SNS::TopicPolicy").values()))
    assert any(s["Effect"] == "Allow" and s["Principal"] == {"Service": "events.amazonaws.com"}
               for s in statements(topic_policy))


def test_every_alarm_on_the_topic_may_publish_to_it(synth: Synth) -> None:
    # The topic policy replaces SNS's default one: without an explicit grant, CloudWatch's alarm
    # notifications are refused. Each alarm acting on the topic is admitted, by its own ARN, from
    # this account only; CloudWatch may do nothing else.
    topic, _ = synth.one("AWS::SNS::Topic")
    (policy,) = [r["Properties"] for r in synth.of_type("AWS::SNS::TopicPolicy").values()
                 if r["Properties"]["Topics"] == [{"Ref": topic}]]
    from_cloudwatch = [s for s in statements({"Properties": policy})
                       if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    alarms = [k for k, r in synth.of_type("AWS::CloudWatch::Alarm").items()
              if {"Ref": topic} in r["Properties"].get("AlarmActions", [])]
    assert len(alarms) == 2  # executions failed, lock-cleanup queue
    assert sorted(json.dumps(s["Condition"]["ArnEquals"]["aws:SourceArn"]) for s in from_cloudwatch) == \
        sorted(json.dumps({"Fn::GetAtt": [alarm, "Arn"]}) for alarm in alarms)
    for statement in from_cloudwatch:
        assert statement["Effect"] == "Allow"
        assert statement["Action"] == "sns:Publish"
        assert statement["Resource"] == {"Ref": topic}
        assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_outputs(synth: Synth) -> None:
    outputs = synth.template["Outputs"]
    assert outputs["BucketName"]["Value"] == {"Ref": _data_bucket(synth)}
    assert outputs["TableName"]["Value"] == {"Ref": synth.one("AWS::DynamoDB::Table")[0]}
    assert outputs["StateMachineArn"]["Value"] == {"Ref": _state_machine(synth)[0]}
    assert outputs["AlertsTopicArn"]["Value"] == {"Ref": synth.one("AWS::SNS::Topic")[0]}


def test_template_is_environment_agnostic(synth: Synth) -> None:
    text = json.dumps(synth.template)
    assert "us-east-1" not in json.dumps(synth.template["Resources"])
    assert '"Ref": "AWS::Region"' in text


# --- checkers ------------------------------------------------------------------------------------

def test_cdk_nag_ran_and_passed(synth: Synth) -> None:
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    plugins = {plugin["pluginName"]: plugin for plugin in report["pluginReports"]}
    assert plugins["AwsSolutions"]["conclusion"] == "success"
    assert plugins["AwsSolutions"]["violations"] == []
    # The only other report: the warning that this test synth's layer is a placeholder.
    others = [v["ruleName"] for name, plugin in plugins.items() if name != "AwsSolutions"
              for v in plugin["violations"]]
    assert others == ["Annotation::recpipe:placeholderLayer"]


def test_every_acknowledgement_names_a_finding_and_a_reason(synth: Synth) -> None:
    acks: dict[str, str] = {}
    for node in synth.stack.node.find_all():
        for entry in node.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                acks.update(entry.data)
    assert len(acks) >= 10
    for finding, reason in acks.items():
        assert finding.startswith("AwsSolutions::AwsSolutions-"), finding
        assert len(reason.split()) >= 8, (finding, reason)
    # The broadest acknowledgements are the expected ones, nothing else on "*".
    on_star = {f for f in acks if f.endswith("[Resource::*]")}
    assert on_star == {"AwsSolutions::AwsSolutions-IAM5[Resource::*]"}


def test_cfn_lint_passes(synth: Synth) -> None:
    from cfnlint.api import ManualArgs, lint_file

    # W3005 (a DependsOn already implied by a GetAtt) is how CDK orders roles before functions.
    matches = lint_file(synth.template_path,
                        ManualArgs(regions=["us-east-1", "eu-west-1"], ignore_checks=["W3005"]))
    assert not matches, "\n".join(str(m) for m in matches)
