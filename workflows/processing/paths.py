"""The container contract: where the step reads and writes (``OPT_ML`` = ``$RECPIPE_OPT_ML`` or
``/opt/ml``), and its progress log."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

OPT_ML_ENV = "RECPIPE_OPT_ML"
_START = time.monotonic()


@dataclass(frozen=True)
class Paths:
    opt_ml: Path

    @property
    def data(self) -> Path:
        return self.opt_ml / "processing" / "input" / "data"

    @property
    def config(self) -> Path:
        return self.opt_ml / "processing" / "input" / "config" / "config.json"

    @property
    def output(self) -> Path:
        return self.opt_ml / "processing" / "output"

    @property
    def failure_files(self) -> tuple[Path, Path]:
        # Processing documents `message` (-> ExitMessage); training's `failure` is written too so
        # that either reader finds the reason.
        return self.opt_ml / "output" / "message", self.opt_ml / "output" / "failure"


def opt_ml_root() -> Path:
    return Path(os.environ.get(OPT_ML_ENV, "/opt/ml"))


def log(message: str) -> None:
    print(f"[processing {time.monotonic() - _START:7.1f}s] {message}", flush=True)
