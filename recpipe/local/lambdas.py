"""Local Lambda: ``lambda:invoke`` Task states run the very handler modules AWS runs, in-process.

``FunctionName`` (a function ARN, a ``name:alias`` or a plain name, as the placeholders were filled)
is looked up in a table ``function name -> "package.module.lambda_handler"``; the handler is
imported and called with the JSON round-trip of the payload and a Lambda-like context object.
The result is the ``lambda:invoke`` integration's envelope (``Payload``, ``StatusCode``, ...).

A handler that raises is reported as AWS reports a Python function error: the error name is the
exception's class name (so ``Catch``/``Retry`` on ``"FooError"`` match) and the cause is the JSON
``{"errorMessage", "errorType", "requestId", "stackTrace"}``. A result that is not JSON is
``Runtime.MarshalError``; an unknown function is ``Lambda.ResourceNotFoundException``.

Handler modules create their boto3 clients at import, reading the environment (table, bucket,
DynamoDB endpoint). Modules under ``lambdas.`` are therefore re-imported whenever that environment
differs from the one they were imported with.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall

Handler = Callable[[Any, Any], Any]

_import_lock = threading.Lock()
_imported_with: dict[str, tuple[str, ...]] = {}
# Environment variables whose value is captured by handler modules at import time.
ENV_SIGNATURE_KEYS: tuple[str, ...] = ("AWS_ENDPOINT_URL_DYNAMODB", "RECPIPE_TABLE", "RECPIPE_BUCKET",
                                       "RECPIPE_DEFAULTS", "AWS_DEFAULT_REGION")


@dataclass
class LambdaContext:
    """The attributes of the AWS Lambda Python context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    timeout_s: float = 900.0
    log_group_name: str = ""
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_name_of(function: str) -> str:
    """``arn:aws:lambda:r:a:function:name[:alias]`` / ``name[:alias]`` -> ``name``."""
    if function.startswith("arn:"):
        parts = function.split(":")
        return parts[6] if len(parts) > 6 else function
    return function.split(":", 1)[0]


def _env_signature() -> tuple[str, ...]:
    return tuple(os.environ.get(k, "") for k in ENV_SIGNATURE_KEYS)


def load_handler(dotted: str) -> Handler:
    """Import ``package.module.function``; re-import ``lambdas.*`` if the environment changed."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"Handler path must be 'module.function', got {dotted!r}.")
    with _import_lock:
        signature = _env_signature()
        top = module_name.split(".", 1)[0]
        if module_name in sys.modules and _imported_with.get(module_name) != signature:
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                if name != top:
                    del sys.modules[name]
                _imported_with.pop(name, None)
        module = importlib.import_module(module_name)
        _imported_with[module_name] = signature
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ValueError(f"{module_name} has no callable '{attr}'.")
    return handler  # type: ignore[no-any-return]


def error_cause(exc: BaseException, request_id: str) -> str:
    """The cause AWS reports for a Python Lambda that raised ``exc``."""
    frames = traceback.extract_tb(exc.__traceback__)
    return json.dumps({
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {f.line or ""}\n'
                       for f in frames],
    })


class LocalLambda:
    """Handler of ``lambda`` Task states.

    ``functions`` maps function names (the last part of the local ARNs) to dotted handler paths;
    ``overrides`` maps function names to callables used instead (tests inject failures this way).
    """

    def __init__(self, functions: Mapping[str, str], *, overrides: Mapping[str, Handler] | None = None,
                 region: str = "us-east-1", account: str = "123456789012") -> None:
        self.functions = dict(functions)
        self.overrides = dict(overrides or {})
        self.region = region
        self.account = account
        self.invocations: list[dict[str, Any]] = []

    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    def resolve(self, function: str) -> tuple[str, Handler]:
        name = function_name_of(function)
        if name in self.overrides:
            return name, self.overrides[name]
        dotted = self.functions.get(name)
        if dotted is None:
            raise TaskFailure("Lambda.ResourceNotFoundException",
                              f"Function not found: {self.arn(name)} (Service: AWSLambda; Status Code: 404; "
                              "Error Code: ResourceNotFoundException; "
                              f"Request ID: {uuid.uuid4()}; Proxy: null)")
        try:
            return name, load_handler(dotted)
        except (ImportError, ValueError) as exc:  # what the Lambda runtime reports for a bad handler
            raise TaskFailure("Runtime.ImportModuleError", json.dumps({
                "errorMessage": f"Unable to import module '{dotted.rpartition('.')[0]}': {exc}",
                "errorType": "Runtime.ImportModuleError", "requestId": str(uuid.uuid4()),
                "stackTrace": []})) from exc

    def __call__(self, call: TaskCall) -> dict[str, Any]:
        if call.action != "invoke":
            raise TaskFailure("Lambda.InvalidRequestContentException",
                              f"The local engine implements lambda:invoke only, not lambda:{call.action}.")
        function = call.parameters.get("FunctionName")
        if not function:
            raise TaskFailure("Lambda.InvalidParameterValueException", "FunctionName is required.")
        name, handler = self.resolve(str(function))
        payload = call.parameters.get("Payload", {})
        if isinstance(payload, str | bytes):
            try:
                event = json.loads(payload)
            except json.JSONDecodeError as exc:
                raise TaskFailure("Lambda.InvalidRequestContentException",
                                  f"Could not parse request body into json: {exc}") from exc
        else:
            event = json.loads(json.dumps(payload))
        context = LambdaContext(function_name=name, invoked_function_arn=self.arn(name))
        started = time.time()
        try:
            result = handler(event, context)
        except Exception as exc:
            self.invocations.append({"function": name, "ok": False, "seconds": time.time() - started})
            raise TaskFailure(type(exc).__name__, error_cause(exc, context.aws_request_id)) from exc
        try:
            result = json.loads(json.dumps(result))
        except (TypeError, ValueError) as exc:
            raise TaskFailure("Runtime.MarshalError", json.dumps({
                "errorMessage": f"Unable to marshal response: {exc}", "errorType": "Runtime.MarshalError",
                "requestId": context.aws_request_id, "stackTrace": []})) from exc
        self.invocations.append({"function": name, "ok": True, "seconds": time.time() - started})
        return {
            "ExecutedVersion": "$LATEST",
            "Payload": result,
            "SdkHttpMetadata": {"HttpHeaders": {"Content-Type": "application/json",
                                                "X-Amz-Executed-Version": "$LATEST",
                                                "x-amzn-RequestId": context.aws_request_id},
                                "HttpStatusCode": 200},
            "SdkResponseMetadata": {"RequestId": context.aws_request_id},
            "StatusCode": 200,
        }
