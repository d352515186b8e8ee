"""The read API (infra/api.py): IAM auth on every route, read-only table access, throttling, logs,
cdk-nag clean; on its own in a bare Stack and in the full stack's session synth."""

from __future__ import annotations

import json
import os
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from infra.api import HANDLER, POINTER_TTL_ENV, READ_ACTIONS, ROUTES, ReadApi
from recpipe import tables
from tests.infra.cfn import statements
from tests.infra.conftest import Synth

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def _bare(*, allow_unauthenticated: bool = False, nag: bool = False) -> tuple[cdk.App, cdk.Stack, ReadApi]:
    app = cdk.App()
    stack = cdk.Stack(app, "Bare")
    table = dynamodb.Table(stack, "Table",
                           partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
                           point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                               point_in_time_recovery_enabled=True))
    layer = lambda_.LayerVersion.from_layer_version_arn(
        stack, "Layer", "arn:aws:lambda:us-east-1:123456789012:layer:deps:1")
    api = ReadApi(stack, "Api", table=table, code=lambda_.Code.from_inline("def lambda_handler(e, c): 0"),
                  layer=layer, name_prefix="recpipe", log_retention=logs.RetentionDays.ONE_WEEK,
                  rate_limit=25, burst_limit=50, pointer_ttl_seconds=3,
                  allow_unauthenticated=allow_unauthenticated)
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack, api


def _routes(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["RouteKey"]: r["Properties"] for r in template["Resources"].values()
            if r["Type"] == "AWS::ApiGatewayV2::Route"}


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _api_role_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    (function,) = [r for r in template["Resources"].values()
                   if r["Type"] == "AWS::Lambda::Function" and r["Properties"]["Handler"] == HANDLER]
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    found = []
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]:
            found.extend(statements(resource))
    assert not template["Resources"][role]["Properties"].get("ManagedPolicyArns")
    return found


def test_every_route_is_iam_authorized_and_throttled_and_logged() -> None:
    _, stack, _ = _bare()
    template = Template.from_stack(stack).to_json()
    routes = _routes(template)
    assert sorted(routes) == sorted(f"GET {path}" for path in ROUTES)
    assert all(props["AuthorizationType"] == "AWS_IAM" for props in routes.values())
    (stage,) = [r["Properties"] for r in template["Resources"].values()
                if r["Type"] == "AWS::ApiGatewayV2::Stage"]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"] == {"ThrottlingBurstLimit": 50, "ThrottlingRateLimit": 25}
    assert "$context.requestId" in stage["AccessLogSettings"]["Format"]
    json.loads(stage["AccessLogSettings"]["Format"])  # one JSON object per request


def test_the_function_reads_the_table_and_nothing_else() -> None:
    _, stack, _ = _bare()
    template = Template.from_stack(stack).to_json()
    table = next(k for k, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table")
    dynamo = [s for s in _api_role_statements(template)
              if any(a.startswith("dynamodb:") for a in _actions(s))]
    assert [(sorted(_actions(st)), st["Effect"], st["Resource"]) for st in dynamo] == [
        (sorted(READ_ACTIONS), "Allow", {"Fn::GetAtt": [table, "Arn"]})]
    every = {a for s in _api_role_statements(template) for a in _actions(s)}
    assert every == {*READ_ACTIONS, "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments",
                      "xray:PutTelemetryRecords"}
    (function,) = [r["Properties"] for r in template["Resources"].values()
                   if r["Type"] == "AWS::Lambda::Function"]
    assert function["Environment"]["Variables"][tables.TABLE_ENV] == {"Ref": table}
    assert function["Environment"]["Variables"][POINTER_TTL_ENV] == "3"
    assert function["TracingConfig"] == {"Mode": "Active"} and "LoggingConfig" in function


def _open_function(stack: cdk.Stack) -> lambda_.Function:
    return lambda_.Function(stack, "Open", runtime=lambda_.Runtime.PYTHON_3_12, handler="index.h",
                            code=lambda_.Code.from_inline("def h(e, c): 0"))


@pytest.mark.parametrize("via_add_routes", [True, False])
def test_an_unauthenticated_route_cannot_exist_by_default(via_add_routes: bool) -> None:
    app, stack, api = _bare()
    integration = integrations.HttpLambdaIntegration("Open", _open_function(stack))
    if via_add_routes:
        api.http_api.add_routes(path="/open", methods=[apigwv2.HttpMethod.GET],
                                authorizer=apigwv2.HttpNoneAuthorizer(), integration=integration)
    else:  # a route made elsewhere in the stack, on the API
        apigwv2.HttpRoute(stack, "Raw", http_api=api.http_api, integration=integration,
                          route_key=apigwv2.HttpRouteKey.with_("/open", apigwv2.HttpMethod.GET),
                          authorizer=apigwv2.HttpNoneAuthorizer())
    with pytest.raises(RuntimeError, match=r"The API route 'GET /open' .* has no authorization"):
        app.synth()


def test_a_route_without_an_authorizer_gets_iam() -> None:
    app, stack, api = _bare()
    apigwv2.HttpRoute(stack, "Raw", http_api=api.http_api,
                      integration=integrations.HttpLambdaIntegration("Raw", _open_function(stack)),
                      route_key=apigwv2.HttpRouteKey.with_("/raw", apigwv2.HttpMethod.GET))
    app.synth()
    assert _routes(Template.from_stack(stack).to_json())["GET /raw"]["AuthorizationType"] == "AWS_IAM"


def test_unauthenticated_routes_only_when_asked_for_and_iam_stays_the_default() -> None:
    app, stack, api = _bare(allow_unauthenticated=True)
    fn = _open_function(stack)
    api.http_api.add_routes(path="/open", methods=[apigwv2.HttpMethod.GET],
                            authorizer=apigwv2.HttpNoneAuthorizer(),
                            integration=integrations.HttpLambdaIntegration("Open", fn))
    api.http_api.add_routes(path="/later", methods=[apigwv2.HttpMethod.GET],
                            integration=integrations.HttpLambdaIntegration("Later", fn))
    app.synth()
    routes = _routes(Template.from_stack(stack).to_json())
    assert routes["GET /open"]["AuthorizationType"] == "NONE"
    assert routes["GET /later"]["AuthorizationType"] == "AWS_IAM"  # a new route inherits IAM


def test_the_construct_alone_is_cdk_nag_clean() -> None:
    app, _, _ = _bare(nag=True)
    app.synth()  # cdk-nag findings would raise


# --- in the full stack ---------------------------------------------------------------------------

def test_the_stack_deploys_the_api_with_its_url_output(synth: Synth) -> None:
    routes = _routes(synth.template)
    assert sorted(routes) == sorted(f"GET {path}" for path in ROUTES)
    assert {props["AuthorizationType"] for props in routes.values()} == {"AWS_IAM"}
    table = synth.one("AWS::DynamoDB::Table")[0]
    dynamo = [s for s in _api_role_statements(synth.template)
              if any(a.startswith("dynamodb:") for a in _actions(s))]
    assert [(sorted(_actions(st)), st["Effect"], st["Resource"]) for st in dynamo] == [
        (sorted(READ_ACTIONS), "Allow", {"Fn::GetAtt": [table, "Arn"]})]
    (stage_id, _) = synth.one("AWS::ApiGatewayV2::Stage")
    url = json.dumps(synth.template["Outputs"]["ApiUrl"]["Value"])
    assert "execute-api" in url and synth.one("AWS::ApiGatewayV2::Api")[0] in url
    assert stage_id
