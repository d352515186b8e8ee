"""The processing step (SageMaker Processing, prebuilt scikit-learn container).

``preprocess.py`` is the script; it runs with the modules listed by :func:`code_files` beside it in
the container's code directory. CDK uploads exactly these files to ``code/processing/`` and the
local engine copies them into ``OPT_ML/processing/input/code/``.

Which image: the script needs Python >= 3.10 and pandas >= 2.0 (``format="ISO8601"``), i.e. the
scikit-learn framework image ``1.4-2`` or later.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

CODE_DIR = "/opt/ml/processing/input/code"
SCRIPT = "preprocess.py"
ENTRYPOINT = ["python3", f"{CODE_DIR}/{SCRIPT}"]


def _module_file(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot locate the module {name} to ship with the processing script")
    return Path(spec.origin)


def code_files() -> dict[str, Path]:
    """File name in the container's code directory -> source file in this repository."""
    return {
        SCRIPT: Path(__file__).with_name(SCRIPT),
        "recpipe_config.py": _module_file("recpipe.config"),
        "recpipe_recordio.py": _module_file("recpipe.formats.recordio"),
    }
