"""Training speed of the Factorization Machines stand-in against a plain numpy minibatch trainer.

Both train the same model the same way (k=64, minibatch Adam with lazy row updates, the built-in
algorithm's update), in the same process, on:

- MovieLens-100k (90/10 random split), regression on one-hot user + item rows;
- the pipeline's own rows ("context"): the processing step run on MovieLens-100k with the default
  config (whatever ``recpipe/config.py`` says today: at the time of writing binary classification
  on 0.9M training rows of about 44 non-zeros, user and item ids, side features and the decayed
  50-item sequence context), trained with the default ``fm.*`` hyperparameters for 2 epochs, test
  log loss on the processing step's test set;
- a synthetic MovieLens-25M-sized set: 162,541 users, 62,423 items with Zipf popularity, 5M
  training + 0.5M test rows, ratings from a planted low-rank model plus noise (the model, 57 MB of
  factors plus 115 MB of Adam moments, no longer fits in the cache).

Printed: samples/s of ours (every core, Hogwild) and of the reference, samples per CPU-second,
their test RMSE (log loss for the context rows) after the same epochs, the cold JIT compile time
and the warm (cached) load time of the kernels.

    .venv/bin/python bench/fm_train.py [--quick] [--context-only]

Ends with ``RESULT samples_per_s_small=<n> samples_per_s_large=<n> ratio=<ours large / numpy large>
samples_per_s_context=<n> ratio_context=<ours context / numpy context>`` (``--context-only``: only
the last two).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recpipe.algorithms.fm import FactorizationMachines, fm_metrics

ROOT = Path(__file__).resolve().parents[1]
K = 64
BATCH = 1000
HP: dict[str, Any] = {
    "num_factors": K, "predictor_type": "regressor", "mini_batch_size": BATCH,
    "bias_lr": 0.1, "linear_lr": 0.005, "factors_lr": 0.001,
    "bias_wd": 0.01, "linear_wd": 0.001, "factors_wd": 0.001,
    "bias_init_sigma": 0.01, "linear_init_sigma": 0.01, "factors_init_sigma": 0.01,
}


# --- the reference: a plain numpy minibatch trainer of the same model and update ----------------
class NumpyFM:
    """Minibatch Adam FM in vectorised numpy/scipy: per batch, gather the touched rows, compute the
    gradient with sparse-dense products, update those rows (the built-in's lazy Adam)."""

    def __init__(self, n: int, hp: dict[str, Any], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.hp = hp
        self.binary = hp.get("predictor_type") == "binary_classifier"
        self.rng = rng
        self.V = rng.normal(0, hp["factors_init_sigma"], (n, hp["num_factors"])).astype(np.float32)
        self.w = rng.normal(0, hp["linear_init_sigma"], n).astype(np.float32)
        self.b = float(rng.normal(0, hp["bias_init_sigma"]))
        self.mV = np.zeros_like(self.V)
        self.vV = np.zeros_like(self.V)
        self.mw = np.zeros_like(self.w)
        self.vw = np.zeros_like(self.w)
        self.mb = self.vb = 0.0
        self.t = 0

    def fit(self, X: sp.csr_matrix, y: np.ndarray, epochs: int) -> NumpyFM:
        perm = self.rng.permutation(X.shape[0])
        X, y = X[perm], y[perm]
        bs = self.hp["mini_batch_size"]
        n_batches = -(-X.shape[0] // bs)
        for _ in range(epochs):
            for bi in self.rng.permutation(n_batches):
                self._step(X[bi * bs:(bi + 1) * bs], y[bi * bs:(bi + 1) * bs])
        return self

    def _adam(self, p: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr: float) -> None:
        b1, b2 = 0.9, 0.999
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        p -= lr * m / (np.sqrt(v) + 1e-8)

    def _step(self, Xb: sp.csr_matrix, yb: np.ndarray) -> None:
        hp = self.hp
        self.t += 1
        corr = math.sqrt(1 - 0.999**self.t) / (1 - 0.9**self.t)
        cols, local = np.unique(Xb.indices, return_inverse=True)
        Xl = sp.csr_matrix((Xb.data, local.reshape(-1), Xb.indptr), shape=(Xb.shape[0], cols.size))
        X2 = Xl.multiply(Xl).tocsr()
        V, w = self.V[cols], self.w[cols]
        q = Xl @ V
        score = self.b + Xl @ w + 0.5 * ((q * q).sum(1) - X2 @ (V * V).sum(1))
        dscore = 1.0 / (1.0 + np.exp(-score)) - yb if self.binary else score - yb
        g = (dscore / hp["mini_batch_size"]).astype(np.float32)
        gw = Xl.T @ g + hp["linear_wd"] * w
        gV = Xl.T @ (g[:, None] * q) - (X2.T @ g)[:, None] * V + hp["factors_wd"] * V
        mV, vV, mw, vw = self.mV[cols], self.vV[cols], self.mw[cols], self.vw[cols]
        self._adam(V, mV, vV, gV, hp["factors_lr"] * corr)
        self._adam(w, mw, vw, gw, hp["linear_lr"] * corr)
        self.V[cols], self.mV[cols], self.vV[cols] = V, mV, vV
        self.w[cols], self.mw[cols], self.vw[cols] = w, mw, vw
        gb = float(g.sum()) + hp["bias_wd"] * self.b
        self.mb = 0.9 * self.mb + 0.1 * gb
        self.vb = 0.999 * self.vb + 0.001 * gb * gb
        self.b -= hp["bias_lr"] * corr * self.mb / (math.sqrt(self.vb) + 1e-8)

    def predict(self, X: sp.csr_matrix) -> np.ndarray:
        q = X @ self.V
        X2 = X.multiply(X).tocsr()
        return np.asarray(self.b + X @ self.w + 0.5 * ((q * q).sum(1) - X2 @ (self.V * self.V).sum(1)))


# --- data ---------------------------------------------------------------------------------------
def one_hot(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    n = users.size
    indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
    indices = np.empty(2 * n, dtype=np.int32)
    indices[0::2] = users
    indices[1::2] = n_users + items
    return sp.csr_matrix((np.ones(2 * n, np.float32), indices, indptr), shape=(n, n_users + n_items))


def movielens(workdir: Path) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    import pandas as pd

    csv = ROOT / ".recpipe" / "datasets" / "ml-100k" / "interactions" / "interactions.csv"
    if not csv.exists():
        from recpipe.datasets import movielens_100k

        dest = movielens_100k(workdir / "ml-100k", ROOT / ".recpipe" / "cache")
        csv = dest / "interactions" / "interactions.csv"
    df = pd.read_csv(csv)
    users = df["user_id"].astype("category").cat.codes.to_numpy(np.int32)
    items = df["item_id"].astype("category").cat.codes.to_numpy(np.int32)
    X = one_hot(users, items, int(users.max()) + 1, int(items.max()) + 1)
    y = df["rating"].to_numpy(np.float32)
    test = np.random.default_rng(7).random(y.size) < 0.1
    return X[~test], y[~test], X[test], y[test]


def synthetic_25m(n_train: int, n_test: int) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    n_users, n_items, rank = 162_541, 62_423, 8
    rng = np.random.default_rng(25)
    n = n_train + n_test
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf popularity
    item_p /= item_p.sum()
    items = rng.permutation(n_items)[rng.choice(n_items, size=n, p=item_p)].astype(np.int32)
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, size=n, p=activity / activity.sum()).astype(np.int32)
    pu = rng.normal(0, 0.4, (n_users, rank)).astype(np.float32)
    qi = rng.normal(0, 0.4, (n_items, rank)).astype(np.float32)
    bu = rng.normal(0, 0.3, n_users).astype(np.float32)
    bi = rng.normal(0, 0.4, n_items).astype(np.float32)
    y = 3.5 + bu[users] + bi[items] + np.einsum("ij,ij->i", pu[users], qi[items]) + rng.normal(0, 0.6, n)
    y = np.clip(y, 1.0, 5.0).astype(np.float32)
    X = one_hot(users, items, n_users, n_items)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


# --- measurements -------------------------------------------------------------------------------
def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64).ravel() - b) ** 2)))


def test_error(scores: np.ndarray, y: np.ndarray, binary: bool) -> float:
    """RMSE of the scores (regressor) or the log loss of the raw scores (binary classifier)."""
    if not binary:
        return rmse(scores, y)
    scores = np.asarray(scores, np.float64).ravel()
    return fm_metrics(y, scores, True, prefix="")["binary_classification_cross_entropy"]


def compare(
    name: str, data: tuple[Any, ...], epochs: int, ref_epochs: int, hp: dict[str, Any] | None = None
) -> tuple[float, float]:
    Xtr, ytr, Xte, yte = data
    hp = HP if hp is None else hp
    binary = hp.get("predictor_type") == "binary_classifier"
    metric = "log loss" if binary else "rmse"
    samples = Xtr.shape[0] * epochs
    ours = FactorizationMachines(**hp, epochs=epochs, seed=1)
    c0, t0 = time.process_time(), time.perf_counter()
    ours.fit(Xtr, ytr)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    ours_rmse = test_error(ours.decision_function(Xte), yte, binary)

    ref = NumpyFM(Xtr.shape[1], {**hp}, seed=1)
    c0, t0 = time.process_time(), time.perf_counter()
    ref.fit(Xtr, ytr, ref_epochs)
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    ref_rmse = test_error(ref.predict(Xte), yte, binary)
    ours_sps = samples / t_ours
    ref_sps = Xtr.shape[0] * ref_epochs / t_ref
    print(f"{name}: {Xtr.shape[0]:,} train rows x {epochs} epochs ({Xtr.nnz / Xtr.shape[0]:.1f} non-zeros "
          f"a row), {Xte.shape[0]:,} test rows, {Xtr.shape[1]:,} features, k={hp['num_factors']}")
    # Samples per CPU-second shows the speed a thread has when it gets a core to itself (the
    # machine is shared: wall-clock figures drop with everyone else's load).
    print(f"  ours  ({os.cpu_count()} threads): {ours_sps / 1e6:7.2f} M samples/s  ({t_ours:.2f} s, "
          f"{samples / c_ours / 1e6:.2f} M per CPU-s)  test {metric} {ours_rmse:.4f}")
    print(f"  numpy reference:   {ref_sps / 1e6:7.2f} M samples/s  ({t_ref:.2f} s, "
          f"{Xtr.shape[0] * ref_epochs / c_ref / 1e6:.2f} M per CPU-s)  test {metric} {ref_rmse:.4f}")
    gap = ours_rmse / ref_rmse - 1
    print(f"  speed-up {ours_sps / ref_sps:.1f}x, {metric} ours/reference - 1 = {gap:+.2%} "
          f"({'within' if abs(gap) <= 0.01 else 'OUTSIDE'} 1%)")
    return ours_sps, ref_sps


def pipeline_rows(workdir: Path) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The processing step's training and test rows on MovieLens-100k with the default config, and
    the FM hyperparameters the pipeline trains them with (the ``fm.*`` defaults)."""
    import json
    import shutil

    from recpipe import config
    from recpipe.datasets import movielens_100k
    from recpipe.formats.recordio import read_sparse
    from workflows.processing import step

    source = movielens_100k(ROOT / ".recpipe" / "datasets" / "ml-100k", ROOT / ".recpipe" / "cache")
    opt_ml = workdir / "opt_ml"
    data = opt_ml / "processing" / "input" / "data"
    for part in ("interactions", "users", "items"):
        if (source / part).exists():
            shutil.copytree(source / part, data / part)
    t0 = time.perf_counter()
    manifest = step.run(opt_ml)
    out = opt_ml / "processing" / "output"
    print(f"(processing step on MovieLens-100k: {time.perf_counter() - t0:.1f} s)")
    dim = int(manifest["feature_dim"])

    def read(name: str) -> tuple[sp.csr_matrix, np.ndarray]:
        parts = [read_sparse(f) for f in sorted((out / name).glob("*.pbr"))]
        X = sp.vstack([sp.csr_matrix(m, shape=(m.shape[0], dim)) for m, _ in parts]).tocsr()
        return X, np.concatenate([np.asarray(lab, np.float32).ravel() for _, lab in parts])

    defaults = config.defaults()
    hp: dict[str, Any] = {key[3:]: value for key, value in defaults.items() if key.startswith("fm.")}
    hp = {name: value for name, value in hp.items() if name in FactorizationMachines().get_params()}
    hp.pop("epochs", None)
    hp["predictor_type"] = "binary_classifier" if manifest["config"].get("processing.mode") != "explicit" \
        else "regressor"
    print(f"(FM hyperparameters: {json.dumps(hp, sort_keys=True)})")
    return (*read("train"), *read("test")), hp


_COMPILE_PROBE = """
import time, numpy as np, scipy.sparse as sp
t0 = time.perf_counter()
from recpipe.algorithms.fm import FactorizationMachines
X = sp.random(50, 20, density=0.1, format="csr", dtype=np.float32, random_state=0)
m = FactorizationMachines(num_factors=4, epochs=1, mini_batch_size=10)
m.fit(X, np.ones(50), X_test=X, y_test=np.ones(50))
m.predict(X)
print(time.perf_counter() - t0)
"""


def jit_seconds(cache_dir: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M-row large set (smoke run)")
    parser.add_argument("--context-only", action="store_true", help="only the pipeline rows")
    args = parser.parse_args()
    if args.context_only:
        with tempfile.TemporaryDirectory() as tmp:
            context, context_hp = pipeline_rows(Path(tmp))
        FactorizationMachines(**context_hp, epochs=1).fit(context[0][:2000], context[1][:2000])  # JIT cache
        ours, ref = compare("MovieLens-100k pipeline rows (sequence context)", context, 2, 2, hp=context_hp)
        print(f"RESULT samples_per_s_context={ours:.0f} ratio_context={ours / ref:.2f}")
        return

    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as cache:
        cold = jit_seconds(cache)
        warm = jit_seconds(cache)
    print(f"numba kernels: first use {cold:.2f} s cold (compile), {warm:.2f} s warm (cache=True load)")

    with tempfile.TemporaryDirectory() as tmp:
        small = movielens(Path(tmp))
    FactorizationMachines(**HP, epochs=1).fit(small[0][:2000], small[1][:2000])  # warm the JIT cache
    small_ours, _ = compare("MovieLens-100k", small, epochs=40, ref_epochs=40)

    t0 = time.perf_counter()
    n_train = 1_000_000 if args.quick else 5_000_000
    large = synthetic_25m(n_train, n_train // 10)
    print(f"(synthetic set generated in {time.perf_counter() - t0:.1f} s)")
    large_ours, large_ref = compare("synthetic ML-25M-sized", large, epochs=3, ref_epochs=3)
    del large

    with tempfile.TemporaryDirectory() as tmp:
        context, context_hp = pipeline_rows(Path(tmp))
    context_ours, context_ref = compare(
        "MovieLens-100k pipeline rows (sequence context)", context, epochs=2, ref_epochs=2, hp=context_hp
    )
    print(f"RESULT samples_per_s_small={small_ours:.0f} samples_per_s_large={large_ours:.0f} "
          f"ratio={large_ours / large_ref:.2f} samples_per_s_context={context_ours:.0f} "
          f"ratio_context={context_ours / context_ref:.2f}")


if __name__ == "__main__":
    main()
