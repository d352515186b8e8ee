#!/usr/bin/env python3
"""The CDK app: ``npx cdk synth`` / ``npx cdk deploy`` (see docs/DEPLOY.md).

The only place that reads the CDK context (``cdk.json``, ``-c key=value``) and the environment.
The stack is environment-agnostic unless ``CDK_DEPLOY_ACCOUNT``/``CDK_DEPLOY_REGION`` are set.
cdk-nag's AwsSolutions pack runs on every synth; an unacknowledged finding fails it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.settings import CONTEXT_KEYS, settings_from_context
from infra.stack import RecpipeStack, WorkflowArtifacts

ROOT = Path(__file__).resolve().parent
# The default stack name (recpipe:stackName); the CLI's --aws reads this stack unless --stack names another.
STACK_NAME = "Recpipe"


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` of ``cdk.json`` (the CLI passes it in; direct callers such as tests load it)."""
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    return context


def build_app(*, context: Mapping[str, Any] | None = None, outdir: str | None = None,
              workflow: WorkflowArtifacts | None = None,
              cache_dir: Path | None = None) -> tuple[cdk.App, RecpipeStack]:
    """The app with its one stack and the cdk-nag checks (``context=None``: what the CLI passed)."""
    app = cdk.App(context=dict(context) if context is not None else None, outdir=outdir)
    workflow = workflow or WorkflowArtifacts.load()
    settings = settings_from_context({key: app.node.try_get_context(key) for key in CONTEXT_KEYS},
                                     functions=workflow.handlers)
    if cache_dir is None:
        cache_dir = Path(os.environ.get("RECPIPE_CDK_CACHE", ROOT / ".cache" / "cdk"))
    account, region = os.environ.get("CDK_DEPLOY_ACCOUNT"), os.environ.get("CDK_DEPLOY_REGION")
    stack = RecpipeStack(
        app, settings.stack_name,
        settings=settings,
        workflow=workflow,
        cache_dir=cache_dir,
        project_root=ROOT,
        env=cdk.Environment(account=account, region=region) if account or region else None,
        description="recpipe: batch recommendations (SageMaker FM + k-NN, Step Functions)",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> None:
    app, _ = build_app()
    app.synth()


if __name__ == "__main__":
    main()
