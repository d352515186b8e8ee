"""Docker-free Lambda packaging: what goes into the code asset, the pip command, the size limit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from infra import lambda_bundling as lb
from infra.exceptions import BundlingError
from infra.processing_code import stage_files

ROOT = Path(__file__).resolve().parents[2]


def test_function_code_holds_the_handlers_and_their_recpipe_modules_only() -> None:
    files = lb.function_code_files(ROOT)
    assert "lambdas/prepare/handler.py" in files
    assert "recpipe/config.py" in files and "recpipe/tables.py" in files
    for excluded in ("recpipe/cli/__init__.py", "recpipe/datasets.py"):
        assert excluded not in files
    assert not [f for f in files if f.startswith(("recpipe/local/", "recpipe/algorithms/"))]
    assert not [f for f in files if "__pycache__" in f or not f.endswith((".py", ".json"))]


def test_staged_code_is_content_addressed(tmp_path: Path) -> None:
    first = lb.stage_function_code(ROOT, tmp_path)
    assert lb.stage_function_code(ROOT, tmp_path) == first
    assert (first / "lambdas" / "__init__.py").exists()
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*.py")) == sorted(
        f for f in lb.function_code_files(ROOT) if f.endswith(".py"))


def test_every_handler_imports_from_the_staged_code_alone(tmp_path: Path) -> None:
    """No handler needs a module left out of the bundle (local engine, CLI, sagemaker, ...)."""
    from workflows.definition import FUNCTIONS

    staged = lb.stage_function_code(ROOT, tmp_path)
    modules = sorted({handler.rsplit(".", 1)[0] for handler in FUNCTIONS.values()})
    # -S: no site processing, so the editable install of recpipe is invisible; third-party packages
    # (numpy, boto3, powertools: the layer and the runtime) come from the venv's site-packages.
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('sagemaker', 'stepfunctions', 'moto')"
            " or n.startswith(('recpipe.local', 'recpipe.algorithms', 'recpipe.cli')))\n"
            "assert not bad, bad\n"
            "assert all(m.__file__.startswith(sys.argv[1]) for n, m in list(sys.modules.items())"
            " if n.split('.')[0] in ('recpipe', 'lambdas') and getattr(m, '__file__', None))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(staged), sysconfig.get_paths()["purelib"]])}
    result = subprocess.run([sys.executable, "-S", "-c", code, str(staged)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_pip_command_fetches_manylinux_wheels_for_the_lambda_python(tmp_path: Path) -> None:
    command = lb.pip_command(lb.REQUIREMENTS_FILE, tmp_path)
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == lb.LAMBDA_PYTHON_VERSION == \
        lb.LAMBDA_RUNTIME.name.removeprefix("python")
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    assert "manylinux2014_x86_64" in platforms
    assert command[command.index("--target") + 1] == str(tmp_path)


def test_requirements_are_pinned_within_pyproject_ranges() -> None:
    requirements = pytest.importorskip("packaging.requirements")
    import tomllib

    declared = {requirements.Requirement(r).name.lower(): requirements.Requirement(r).specifier
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = [requirements.Requirement(line) for line in lb.REQUIREMENTS_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert {p.name for p in pins} == {"numpy", "scipy", "aws-lambda-powertools", "orjson"}
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", pin
        assert declared[pin.name].contains(spec.version), (pin, declared[pin.name])


def test_dependency_hash_tracks_the_requirements(tmp_path: Path) -> None:
    other = tmp_path / "requirements.txt"
    other.write_text(lb.REQUIREMENTS_FILE.read_text() + "jmespath==1.0.1\n")
    assert lb.dependency_hash(other) != lb.dependency_hash() == lb.dependency_hash()


def test_trim_drops_test_suites_and_scripts(tmp_path: Path) -> None:
    for rel in ("numpy/_core/tests/test_x.py", "scipy/stats/tests/data/x.csv", "bin/f2py",
                "numpy/_core/__pycache__/x.pyc", "numpy/testing/__init__.py", "scipy/stats/_stats.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    lb.trim(tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["numpy/testing/__init__.py", "scipy/stats/_stats.py"]


def test_size_limit() -> None:
    lb.check_size(lb.MAX_UNZIPPED_BYTES, "x")
    with pytest.raises(BundlingError, match=r"250 MiB limit"):
        lb.check_size(lb.MAX_UNZIPPED_BYTES + 1, "The layer")


def test_pip_failure_is_reported_with_its_output(tmp_path: Path) -> None:
    bad = tmp_path / "requirements.txt"
    bad.write_text("this is not a requirement ===\n")
    with pytest.raises(BundlingError, match=r"pip could not install the Lambda dependencies"):
        lb.install_dependencies(tmp_path / "cache", bad)
    assert not list((tmp_path / "cache" / "lambda-deps").iterdir()), "no half-written cache entry"


def test_processing_files_are_staged_by_content(tmp_path: Path) -> None:
    from workflows.processing import code_files

    staged = stage_files(code_files(), tmp_path)
    assert stage_files(code_files(), tmp_path) == staged
    for name, source in code_files().items():
        assert (staged / name).read_bytes() == Path(source).read_bytes()
    with pytest.raises(BundlingError, match="must be a relative path"):
        stage_files({"../escape.py": ROOT / "app.py"}, tmp_path)


# --- the real layer: the docker-free pip bundling `npx cdk synth` runs (cached by content hash) ----

def _built_layer() -> Path:
    cache = Path(os.environ.get("RECPIPE_CDK_CACHE", ROOT / ".cache" / "cdk"))
    # Builds it the way a synth does when no synth has yet (pip download from PyPI, ~1 minute).
    return lb.install_dependencies(cache)


def _lambda_python() -> str:
    """An interpreter of the Lambda runtime's Python version (PATH, then pyenv), or skip."""
    version = lb.LAMBDA_PYTHON_VERSION
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"),
                  *map(str, sorted(pyenv.glob(f"versions/{version}*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    pytest.skip(f"no python{version} interpreter")


def test_bundled_layer_fits_lambda_and_targets_the_runtime() -> None:
    layer = _built_layer()
    code = lb.function_code_files(ROOT)
    total = lb.directory_size(layer) + sum(p.stat().st_size for p in code.values())
    assert total < lb.MAX_UNZIPPED_BYTES
    tag = lb.LAMBDA_PYTHON_VERSION.replace(".", "")
    assert list(layer.glob(f"numpy/_core/_multiarray_umath.cpython-{tag}-x86_64-linux-gnu.so"))
    assert list(layer.glob(f"scipy/sparse/_sparsetools.cpython-{tag}-x86_64-linux-gnu.so"))
    assert (layer / "aws_lambda_powertools").is_dir()
    assert not list(layer.glob("numpy/**/tests"))


def test_bundled_lambda_imports_every_handler_on_the_lambda_python(tmp_path: Path) -> None:
    """What Lambda does at cold start: the handlers import on Python 3.12 with the layer's wheels."""
    from workflows.definition import FUNCTIONS

    layer = _built_layer()
    interpreter = _lambda_python()
    staged = lb.stage_function_code(ROOT, tmp_path)
    modules = sorted({handler.rsplit(".", 1)[0] for handler in FUNCTIONS.values()})
    # boto3 is part of the Lambda runtime: borrow the venv's pure-python copy (after the layer).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(layer), str(staged),
                                                        sysconfig.get_paths()["purelib"]])}
    code = ("import importlib, numpy, scipy.sparse\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "assert numpy.__file__.startswith(__import__('sys').argv[1]), numpy.__file__\n")
    result = subprocess.run([interpreter, "-S", "-c", code, str(layer)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
