"""The step as the container runs it: only the shipped tree, no installed ``recpipe``; and ML-100k."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.unit.processing.conftest import Job
from workflows import processing

# What the scikit-learn processing image has besides the standard library.
CONTAINER_PACKAGES = {"numpy", "pandas", "scipy", "pyarrow"}
# Installed here but not in the container: the test hides them from the subprocess.
NOT_IN_CONTAINER = ("numba", "orjson", "boto3", "botocore", "recpipe", "workflows")


def test_code_files_are_the_repository_tree_without_renamed_copies() -> None:
    files = processing.code_files()
    root = Path(processing.__file__).resolve().parents[2]
    for name, source in files.items():
        assert source.is_file(), name
        assert source == root / name  # same relative path in the container as in the repository
    assert {"recpipe/__init__.py", "recpipe/config.py", "recpipe/formats/__init__.py",
            "recpipe/formats/recordio.py", "workflows/__init__.py", "workflows/processing/__init__.py",
            "workflows/processing/__main__.py", "workflows/processing/step.py"} <= set(files)
    assert not any(Path(name).name.startswith("recpipe_") for name in files)
    assert processing.ENTRYPOINT == [
        "python3", "/opt/ml/processing/input/code/workflows/processing/__main__.py"]


def _unguarded_imports(tree: ast.AST) -> set[str]:
    """Modules imported outside ``try: ... except ImportError`` (a guarded import may be missing) and
    outside ``if TYPE_CHECKING:``."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_shipped_modules_import_only_what_the_container_has() -> None:
    files = processing.code_files()
    shipped = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for name in files}
    for name, source in files.items():
        for module in _unguarded_imports(ast.parse(source.read_text(encoding="utf-8"))):
            top = module.split(".")[0]
            if top in ("recpipe", "workflows"):
                # a module of the tree must be shipped; `from pkg import name` may name an attribute
                assert module in shipped or module.rsplit(".", 1)[0] in shipped, (name, module)
            else:
                assert top in sys.stdlib_module_names or top in CONTAINER_PACKAGES, (name, module)


def test_the_shipped_tree_runs_without_the_installed_packages(tmp_path: Path) -> None:
    code = tmp_path / "code"
    for name, source in processing.code_files().items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, code / name)
    # Shadow what the container lacks (and this repository's installed packages): importing any of
    # them fails, so the step can only use the shipped tree and the container's packages.
    blocker = tmp_path / "blocker"
    for package in NOT_IN_CONTAINER:
        (blocker / package).mkdir(parents=True)
        (blocker / package / "__init__.py").write_text(f"raise ImportError('no {package} here')\n")
    job = Job(tmp_path / "opt_ml")
    job.write("interactions/r.csv", "user_id,item_id,rating,timestamp\n1,10,5,1\n1,11,4,2\n2,10,5,3\n"
              "2,12,4,4\n3,11,5,5\n")
    job.config(**{"processing.negatives_per_positive": 1})
    env = {**os.environ, "RECPIPE_OPT_ML": str(job.opt_ml), "PYTHONPATH": str(blocker)}
    command = [sys.executable, *[a.replace("/opt/ml/processing/input/code", str(code))
                                 for a in processing.ENTRYPOINT[1:]]]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((job.out / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 3 and manifest["counts"]["items"] == 3

    # and bad input fails with the one-line reason on stderr and in the failure file
    (job.data / "interactions" / "r.csv").write_text("user_id,item_id\n1,\n")
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1
    expected = "Bad input: interactions/r.csv, line 2, column 'item_id': empty or NaN item id (got '')\n"
    assert proc.stderr == expected
    assert (job.opt_ml / "output" / "message").read_text() == expected


def test_movielens_100k(ml100k: Path, tmp_path: Path) -> None:
    job = Job(tmp_path / "opt_ml")
    job.data.mkdir(parents=True)
    for part in ("interactions", "users", "items"):
        shutil.copytree(ml100k / part, job.data / part)
    manifest = job.run()
    counts = manifest["counts"]
    assert counts["users"] == 943 and counts["items"] == 1682
    assert counts["interactions"] == 100_000 and counts["duplicates"] == 0
    assert counts["positives"] == 55_375  # ratings >= 4
    rounds = manifest["config"]["processing.negative_rounds"]  # positives written once per round
    assert counts["full_rows"] == rounds * counts["positives"] + counts["negatives"]
    assert counts["train_rows"] == rounds * counts["train_positives"] + counts["train_negatives"]
    assert list(manifest["layout"]["user_features"]) == ["age", "gender", "occupation"]
    assert list(manifest["layout"]["item_features"]) == ["release_year", "genres"]
    assert manifest["layout"]["item_features"]["genres"][1] == 19
    end = manifest["layout"]["item_features"]["genres"]
    assert manifest["layout"]["context"] == [end[0] + end[1], 1682]  # the sequence context block
    assert manifest["feature_dim"] == end[0] + end[1] + 1682
    # every user holds out ceil(0.2 * n_u) of their ratings
    seen = job.npz("seen_all")
    n_u = np.diff(seen.indptr)
    assert counts["holdout"] == int(np.ceil(0.2 * n_u - 1e-9).sum())
    assert len(job.ids("user")) == 943 and job.ids("user")[:3] == ["1", "2", "3"]
    for name in manifest["files"].values():
        if name:
            assert (job.out / name).exists(), name
