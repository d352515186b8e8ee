"""Helpers for the processing-step tests: a fake OPT_ML per job and readers of its output."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recpipe import datasets
from recpipe.formats import recordio
from workflows.processing import paths, step

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Job:
    opt_ml: Path

    @property
    def data(self) -> Path:
        return self.opt_ml / "processing" / "input" / "data"

    @property
    def out(self) -> Path:
        return self.opt_ml / "processing" / "output"

    def write(self, rel: str, content: str | bytes | pd.DataFrame) -> Path:
        path = self.data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pd.DataFrame):
            if path.suffix == ".parquet":
                content.to_parquet(path, index=False)
            else:
                content.to_csv(path, index=False)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def config(self, **values: Any) -> None:
        """Write the job's config. Unless a test says otherwise, rows are plain FM rows (no sequence
        context, one round of negatives), so that a training row is exactly x_u + x_i."""
        values = {"processing.context_items": 0, "processing.negative_rounds": 1, **values}
        path = self.opt_ml / "processing" / "input" / "config" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))

    def run(self) -> dict[str, Any]:
        return step.run(self.opt_ml)

    def main(self, monkeypatch: pytest.MonkeyPatch) -> int:
        monkeypatch.setenv(paths.OPT_ML_ENV, str(self.opt_ml))
        return step.main([])

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.out / "manifest.json").read_text())

    def read_set(self, name: str) -> tuple[sp.csr_matrix, np.ndarray]:
        files = sorted((self.out / name).glob("*.pbr"))
        parts = [recordio.read_sparse(f) for f in files]
        dim = self.manifest["feature_dim"]
        matrices = [sp.csr_matrix(m, shape=(m.shape[0], dim)) for m, _ in parts]
        labels = np.concatenate([np.asarray(lab, dtype=np.float32).ravel() for _, lab in parts])
        return sp.vstack(matrices).tocsr(), labels

    def pairs(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index, item index, label) of every row of a set, from the one-hot id columns."""
        x, labels = self.read_set(name)
        n_users = self.manifest["counts"]["users"]
        n_items = self.manifest["counts"]["items"]
        coo = x.tocoo()
        users = np.full(x.shape[0], -1)
        items = np.full(x.shape[0], -1)
        is_user = coo.col < n_users
        is_item = (coo.col >= n_users) & (coo.col < n_users + n_items)
        users[coo.row[is_user]] = coo.col[is_user]
        items[coo.row[is_item]] = coo.col[is_item] - n_users
        assert (users >= 0).all() and (items >= 0).all()
        return users, items, labels

    def ids(self, kind: str) -> list[str]:
        return (self.out / "meta" / f"{kind}_ids.txt").read_text().splitlines()

    def npz(self, name: str) -> sp.csr_matrix:
        return sp.load_npz(self.out / "meta" / f"{name}.npz").tocsr()

    def holdout(self) -> pd.DataFrame:
        return pd.read_csv(self.out / "meta" / "holdout.csv")

    def failure(self) -> str:
        return (self.opt_ml / "output" / "message").read_text()


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path / "opt_ml")


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[[str], Job]:
    def make(name: str) -> Job:
        return Job(tmp_path / name)

    return make


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """MovieLens-100k in the input layout (the shared cache of ``recpipe data``)."""
    workdir = REPO / ".recpipe"
    return datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
