"""Docker-free packaging of the Lambdas: one shared dependency layer and one source bundle.

**Dependency layer** (numpy, scipy, aws-lambda-powertools; ``lambda_layer/requirements.txt``):
:class:`PipLayerBundler` is an ``ILocalBundling`` that runs ``pip install --platform
manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --only-binary=:all: --python-version 3.12
--target ...`` on this machine, so no docker is needed. pip's result is cached under
``<cache_dir>/lambda-deps/<hash>`` (the hash covers the requirements, platform, Python version and
the trimming rules), so only the first synth after a requirements change runs pip; later synths
copy the cached tree. The asset hash is the same key, so an unchanged layer is never re-uploaded.
Test directories of numpy/scipy are dropped, and the layer plus the function code must fit
Lambda's 250 MB unzipped limit (checked at bundling time).

**Function code**: :func:`stage_function_code` copies ``lambdas/`` and the parts of ``recpipe``
the handlers import (everything but the local engine, the local algorithms, the CLI and the
dataset fetcher) into a content-addressed directory; all functions share that one asset and
differ by handler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

from infra.exceptions import BundlingError

LAMBDA_PYTHON_VERSION = "3.12"
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_12
LAMBDA_ARCHITECTURE = lambda_.Architecture.X86_64
PIP_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
REQUIREMENTS_FILE = Path(__file__).with_name("lambda_layer") / "requirements.txt"
# Lambda's limit on the unzipped size of a function's code plus all its layers.
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
# Directories dropped from the installed dependencies (never imported at run time).
TRIMMED_DIRS = ("tests", "__pycache__")
TRIMMED_TOP_LEVEL = ("bin",)
# Bump when the bundling logic changes in a way that changes the output.
_BUNDLER_VERSION = "1"

# Function code: the packages the handlers import, minus what only runs locally.
CODE_PACKAGES = ("lambdas", "recpipe")
CODE_EXCLUDED = (
    "recpipe/local", "recpipe/algorithms", "recpipe/remote", "recpipe/cli", "recpipe/datasets.py"
)
CODE_SUFFIXES = (".py", ".json")


def directory_size(path: Path) -> int:
    """Bytes of every regular file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def check_size(total_bytes: int, what: str) -> None:
    if total_bytes > MAX_UNZIPPED_BYTES:
        raise BundlingError(
            f"{what} is {total_bytes / 2**20:.1f} MiB unzipped, over Lambda's "
            f"{MAX_UNZIPPED_BYTES / 2**20:.0f} MiB limit for a function's code plus layers."
        )


def _hash_files(files: Iterable[tuple[str, bytes]], *extra: str) -> str:
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode() + b"\0")
    for name, content in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:32]


# --- dependency layer ----------------------------------------------------------------------------

def dependency_hash(requirements: Path = REQUIREMENTS_FILE) -> str:
    return _hash_files(
        [("requirements.txt", requirements.read_bytes())],
        _BUNDLER_VERSION, LAMBDA_PYTHON_VERSION, *PIP_PLATFORMS, *TRIMMED_DIRS, *TRIMMED_TOP_LEVEL,
    )


def pip_command(requirements: Path, target: Path) -> list[str]:
    """The pip invocation that fetches manylinux wheels for the Lambda's Python, without docker."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-input",
               "--disable-pip-version-check", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", LAMBDA_PYTHON_VERSION]
    for platform in PIP_PLATFORMS:
        command += ["--platform", platform]
    return [*command, "--target", str(target), "--requirement", str(requirements)]


def trim(site: Path) -> None:
    """Drop test suites, caches and console scripts: dead weight against the 250 MB limit."""
    for name in TRIMMED_TOP_LEVEL:
        shutil.rmtree(site / name, ignore_errors=True)
    for name in TRIMMED_DIRS:
        for path in sorted(site.rglob(name), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def install_dependencies(cache_dir: Path, requirements: Path = REQUIREMENTS_FILE) -> Path:
    """The pip-installed dependency tree (cached by :func:`dependency_hash`); runs pip on a miss."""
    final = cache_dir / "lambda-deps" / dependency_hash(requirements)
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tmp-", dir=final.parent))
    try:
        result = subprocess.run(pip_command(requirements, work), capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise BundlingError(
                f"pip could not install the Lambda dependencies of {requirements} for Python "
                f"{LAMBDA_PYTHON_VERSION} on {'/'.join(PIP_PLATFORMS)}:\n{result.stderr.strip()}"
            )
        trim(work)
        (work / ".complete").write_text(requirements.read_text())
        if final.exists():  # a half-written tree from an interrupted run
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


@jsii.implements(ILocalBundling)
class PipLayerBundler:
    """Fills a layer asset's output directory with ``python/<installed packages>``."""

    def __init__(self, *, cache_dir: Path, requirements: Path = REQUIREMENTS_FILE,
                 function_code_bytes: int = 0) -> None:
        self.cache_dir = cache_dir
        self.requirements = requirements
        self.function_code_bytes = function_code_bytes

    # jsii passes the BundlingOptions struct positionally (the docker image, unused here).
    def try_bundle(self, output_dir: str, options: Any = None, **_kwargs: Any) -> bool:
        site = install_dependencies(self.cache_dir, self.requirements)
        check_size(directory_size(site) + self.function_code_bytes,
                   "The Lambda dependency layer plus the function code")
        shutil.copytree(site, Path(output_dir) / "python", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".complete"))
        return True


def dependency_layer_code(*, cache_dir: Path, bundle: bool, function_code_bytes: int = 0,
                          requirements: Path = REQUIREMENTS_FILE) -> lambda_.Code:
    """The layer's code: pip-bundled for real, or (``bundle=False``, tests) a placeholder."""
    if not bundle:
        stub = cache_dir / "lambda-deps-skipped"
        (stub / "python").mkdir(parents=True, exist_ok=True)
        (stub / "python" / "DEPENDENCIES_NOT_BUNDLED.txt").write_text(
            "Synthesized with recpipe:bundleDependencies=false: this layer is a placeholder and the "
            "functions would fail to import numpy. Do not deploy this assembly.\n")
        return lambda_.Code.from_asset(str(stub))
    return lambda_.Code.from_asset(
        str(requirements.parent),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=dependency_hash(requirements),
        bundling=BundlingOptions(
            # Never pulled: the local bundler always succeeds or raises.
            image=DockerImage.from_registry("recpipe/local-bundling-only"),
            local=PipLayerBundler(cache_dir=cache_dir, requirements=requirements,
                                  function_code_bytes=function_code_bytes),
        ),
    )


# --- function code -------------------------------------------------------------------------------

def function_code_files(project_root: Path) -> dict[str, Path]:
    """``{relative path: source}`` of everything the handlers may import."""
    files: dict[str, Path] = {}
    for package in CODE_PACKAGES:
        base = project_root / package
        if not (base / "__init__.py").exists():
            raise BundlingError(f"The package directory {base} (with __init__.py) is missing.")
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(project_root).as_posix()
            if (not path.is_file() or path.suffix not in CODE_SUFFIXES or "__pycache__" in path.parts
                    or "/tests/" in f"/{rel}"
                    or any(rel == ex or rel.startswith(ex + "/") for ex in CODE_EXCLUDED)):
                continue
            files[rel] = path
    return files


def stage_tree(contents: Mapping[str, bytes], parent: Path, *extra: str) -> Path:
    """Write ``{relative path: bytes}`` to ``<parent>/<content hash>`` once and return that directory.

    The directory appears whole or not at all (built aside, then renamed), so its existence means it
    is complete; ``extra`` strings join the hash (e.g. a bundler version).
    """
    target = parent / _hash_files(contents.items(), *extra)
    if not target.exists():
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="tmp-", dir=parent))
        try:
            for rel, content in contents.items():
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / rel).write_bytes(content)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def stage_function_code(project_root: Path, cache_dir: Path) -> Path:
    """Copy the function code into ``<cache_dir>/lambda-src/<content hash>`` (reused when unchanged)."""
    files = function_code_files(project_root)
    contents = {rel: src.read_bytes() for rel, src in files.items()}
    return stage_tree(contents, cache_dir / "lambda-src", _BUNDLER_VERSION)


def function_code(staged: Path) -> lambda_.Code:
    return lambda_.Code.from_asset(str(staged))
