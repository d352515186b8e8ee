"""The read API: an API Gateway HTTP API with IAM authorization in front of one Lambda (``lambdas/api``).

Routes: ``GET /recommendations/{user_id}`` and ``GET /similar/{item_id}``. Every route is
authorized with AWS_IAM (callers sign with SigV4 and need ``execute-api:Invoke`` on the route): the
API's default authorizer is IAM, and a validation fails the synth if any route of the stack has no
authorization, unless the construct is built with ``allow_unauthenticated=True`` on purpose.

The function may only read the table (``dynamodb:GetItem`` and ``dynamodb:BatchGetItem`` on the
table's ARN: no index, no write, no scan). The ``$default`` stage throttles (steady rate and burst,
account-wide for the API) and writes JSON access logs; the function logs (Powertools) and traces
(X-Ray) like the pipeline's functions.
"""

from __future__ import annotations

import json

import jsii
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct, IValidation

from infra.lambda_bundling import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME
from infra.nag import acknowledge, resource_finding
from recpipe import tables
from recpipe.serving.reader import POINTER_TTL_ENV
from recpipe.serving.routes import ROUTES

HANDLER = "lambdas.api.handler.lambda_handler"
READ_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem")

# HTTP API context variables (docs: "Customizing HTTP API access logs").
ACCESS_LOG_FORMAT = json.dumps({
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "integrationLatency": "$context.integrationLatency",
    "responseLatency": "$context.responseLatency",
    "sourceIp": "$context.identity.sourceIp",
    "caller": "$context.identity.userArn",
    "error": "$context.error.message",
    "integrationError": "$context.integrationErrorMessage",
})


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogSettings:
    """``IAccessLogSettings`` is an interface, not a struct: jsii needs an object implementing it."""

    def __init__(self, destination: apigwv2.IAccessLogDestination, format: apigw.AccessLogFormat) -> None:
        self._destination = destination
        self._format = format

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return self._format


@jsii.implements(IValidation)
class RoutesAreAuthorized:
    """Fails the synth when a route of the stack has no authorization (``NONE`` or absent)."""

    def __init__(self, scope: Construct) -> None:
        self.scope = scope

    def validate(self) -> list[str]:
        errors = []
        for child in Stack.of(self.scope).node.find_all():
            if isinstance(child, apigwv2.CfnRoute) and child.authorization_type in (None, "NONE"):
                errors.append(f"The API route {child.route_key!r} ({child.node.path}) has no authorization: "
                              "recpipe's API routes need AWS_IAM (or build ReadApi with "
                              "allow_unauthenticated=True on purpose).")
        return errors


class ReadApi(Construct):
    """The HTTPS read API (``self.url``), its function (``self.function``) and log groups."""

    def __init__(self, scope: Construct, construct_id: str, *, table: dynamodb.ITable, code: lambda_.Code,
                 layer: lambda_.ILayerVersion, name_prefix: str, log_retention: logs.RetentionDays,
                 rate_limit: float = 100.0, burst_limit: int = 200, pointer_ttl_seconds: float = 10.0,
                 memory_mb: int = 512, allow_unauthenticated: bool = False) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "FunctionLogs", retention=log_retention,
                                       removal_policy=RemovalPolicy.DESTROY)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="recpipe read API Lambda (reads the results table only)")
        self.log_group.grant_write(self.role)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=list(READ_ACTIONS), resources=[table.table_arn]))
        self.function = lambda_.Function(
            self, "Function",
            function_name=f"{name_prefix}-api",
            description="recpipe read API: recommendations and similar items of the active version",
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            handler=HANDLER,
            code=code,
            layers=[layer],
            memory_size=memory_mb,
            timeout=Duration.seconds(10),
            environment={
                tables.TABLE_ENV: table.table_name,
                POINTER_TTL_ENV: str(pointer_ttl_seconds),
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
        )

        self.http_api = apigwv2.HttpApi(
            self, "HttpApi",
            api_name=f"{name_prefix}-api",
            description="recpipe read API (IAM-authorized)",
            default_authorizer=authorizers.HttpIamAuthorizer(),
            create_default_stage=False,
        )
        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=log_retention,
                                         removal_policy=RemovalPolicy.DESTROY)
        self.stage = apigwv2.HttpStage(
            self, "Stage",
            http_api=self.http_api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit),
            access_log_settings=_AccessLogSettings(apigwv2.LogGroupLogDestination(self.access_logs),
                                                   apigw.AccessLogFormat.custom(ACCESS_LOG_FORMAT)),
        )
        integration = integrations.HttpLambdaIntegration("Read", self.function)
        for path in ROUTES:
            self.http_api.add_routes(path=path, methods=[apigwv2.HttpMethod.GET], integration=integration)
        self.url: str = self.stage.url
        if not allow_unauthenticated:
            self.node.add_validation(RoutesAreAuthorized(self))

        acknowledge(self, "AwsSolutions-L1",
                    f"The function runs {LAMBDA_RUNTIME.name} on purpose: it shares the dependency layer "
                    "built for exactly this Python (infra/lambda_bundling.py); upgrade both together.")
        acknowledge(self, resource_finding("*"),
                    "Active X-Ray tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no "
                    "resource-level permissions (the only statement on '*').")
