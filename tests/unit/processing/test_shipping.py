"""The script as the container runs it: only the shipped files, no ``recpipe`` package; and ML-100k."""

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
from workflows.processing import preprocess

ALLOWED_IMPORTS = {
    "__future__", "collections", "dataclasses", "hashlib", "io", "json", "math", "os", "re", "shutil", "sys",
    "pathlib", "time", "traceback", "typing", "warnings", "numpy", "pandas", "scipy", "pyarrow",
    "recpipe", "recpipe_config", "recpipe_recordio",
}


def test_code_files_name_the_shipped_modules() -> None:
    files = processing.code_files()
    assert set(files) == {"preprocess.py", "recpipe_config.py", "recpipe_recordio.py"}
    assert all(path.is_file() for path in files.values())
    assert files["recpipe_config.py"].as_posix().endswith("recpipe/config.py")
    assert files["recpipe_recordio.py"].as_posix().endswith("recpipe/formats/recordio.py")
    assert processing.ENTRYPOINT == ["python3", "/opt/ml/processing/input/code/preprocess.py"]


def test_script_imports_only_what_the_container_has() -> None:
    tree = ast.parse(Path(preprocess.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module == "recpipe":
                assert {alias.name for alias in node.names} == {"config"}
            if node.module == "recpipe.formats":
                assert {alias.name for alias in node.names} == {"recordio"}
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


def test_shipped_files_run_without_the_recpipe_package(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    for name, source in processing.code_files().items():
        shutil.copy(source, code / name)
    # Shadow the installed recpipe so that only the shipped copies can be imported.
    blocker = tmp_path / "blocker" / "recpipe"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('recpipe is not in the processing container')\n")
    job = Job(tmp_path / "opt_ml")
    job.write("interactions/r.csv", "user_id,item_id,rating,timestamp\n1,10,5,1\n1,11,4,2\n2,10,5,3\n"
              "2,12,4,4\n3,11,5,5\n")
    job.config(**{"processing.negatives_per_positive": 1})
    # As `python3 code/preprocess.py` would, with the script's directory first on sys.path.
    probe = ("import os, runpy, sys; sys.argv = [sys.argv[1]]; "
             "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
             "ns = runpy.run_path(sys.argv[0], run_name='not_main'); "
             "print('MODULES', ns['cfg'].__name__, ns['recordio'].__name__); "
             "sys.exit(ns['main']([]))")
    env = {**os.environ, "RECPIPE_OPT_ML": str(job.opt_ml), "PYTHONPATH": str(blocker.parent)}
    proc = subprocess.run([sys.executable, "-c", probe, str(code / "preprocess.py")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "MODULES recpipe_config recpipe_recordio" in proc.stdout
    manifest = json.loads((job.out / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 3 and manifest["counts"]["items"] == 3

    # and the plain entry point, as the container calls it, fails with the one-line reason
    (job.data / "interactions" / "r.csv").write_text("user_id,item_id\n1,\n")
    proc = subprocess.run([sys.executable, str(code / "preprocess.py")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
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
