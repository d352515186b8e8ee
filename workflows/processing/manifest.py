"""The manifest (``manifest.json``, written last: its presence means the output is complete)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST_SCHEMA_VERSION = 1


def write_manifest(output: Path, manifest: dict[str, Any]) -> None:
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n",
                                          encoding="utf-8")
