"""One synth of the whole app per test session (cdk-nag included), shared by every infra test.

The synth uses ``cdk.json``'s context with two overrides: ``recpipe:bundleDependencies=false``
(no pip, no network: the dependency layer is a placeholder; the real bundling is exercised by
``npx cdk synth`` and checked by ``test_bundling.py`` when its cache exists) and an alert e-mail
(so that the subscription is rendered).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

ALERT_EMAIL = "alerts@example.com"


@dataclass(frozen=True)
class Synth:
    template: dict[str, Any]
    outdir: Path
    template_path: Path
    cache_dir: Path
    stack: Any  # infra.stack.RecpipeStack
    assertions: Any  # aws_cdk.assertions.Template

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        resources: dict[str, dict[str, Any]] = self.template["Resources"]
        return resources

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == cfn_type}

    def one(self, cfn_type: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(cfn_type)
        assert len(found) == 1, f"expected one {cfn_type}, found {sorted(found)}"
        return next(iter(found.items()))


def _nag_violations(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    lines = []
    for plugin in json.loads(report.read_text()).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for construct in violation.get("violatingConstructs", []):
                lines.append(f"{violation['ruleName']} at {construct['constructPath']}")
    return lines


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    from aws_cdk.assertions import Template

    from app import STACK_NAME, build_app, cdk_json_context
    from infra.stack import WorkflowArtifacts

    outdir = tmp_path_factory.mktemp("cdk.out")
    cache_dir = tmp_path_factory.mktemp("cdk-cache")
    context = cdk_json_context() | {"recpipe:bundleDependencies": False, "recpipe:alertEmail": ALERT_EMAIL}
    app, stack = build_app(context=context, outdir=str(outdir), workflow=WorkflowArtifacts.load(),
                           cache_dir=cache_dir)
    try:
        assembly = app.synth()
    except RuntimeError as exc:
        violations = _nag_violations(outdir)
        if violations:
            pytest.fail("cdk-nag findings without an acknowledgement:\n  " + "\n  ".join(violations))
        raise exc
    artifact = assembly.get_stack_by_name(STACK_NAME)
    template: dict[str, Any] = artifact.template
    yield Synth(template=template, outdir=outdir, template_path=Path(artifact.template_full_path),
                cache_dir=cache_dir, stack=stack, assertions=Template.from_json(template))
