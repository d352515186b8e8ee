"""The whole local pipeline on a synthetic 1M-user implicit dataset: wall time per state, and the
peak memory of every Lambda worker against the memory it is deployed with.

    .venv/bin/python bench/scale.py                      # 1,000,000 users x 100,000 items x 20M rows
    .venv/bin/python bench/scale.py --users 20000        # smoke run (interactions default to 20/user)

**Data.** ``--users`` x ``--items`` x ``--interactions`` distinct (user, item) pairs, implicit (no
rating, no timestamp: file order is time order), one Parquet file ``user_id,item_id`` cached under
``.recpipe/bench/`` (Parquet because the processing step reads it several times faster than CSV).
Item popularity is Zipf (weight 1 / (rank + 10), popular items are not the small ids); user activity
is Pareto-tailed (at least 3 rows, mean interactions / users). Latent structure, so the model has
something to learn: items are dealt round-robin by popularity rank into ``--topics`` topics, every
user has one topic, and each of her rows comes with probability ``TOPIC_SHARE`` from her topic (Zipf
within it), else from the global law. Pairs drawn twice are redrawn until all are distinct.

**Config.** Cheap but with the deployed shapes: implicit, one negative round, one negative per
positive, no sequence context, one FM epoch; everything else (top_n, k-NN margin, shard size, eval
sample) at its default, so the Lambdas handle the volumes they would on AWS. ``--set key=value``
adds overrides.

**Worker memory (the figure that must fit the deployed Lambda).** The local engine runs Lambda
handlers in-process, so one invocation's peak is measured in this process: every handler is wrapped
(``EngineOptions.lambda_overrides``, no change to the engine) so that invocations never overlap (a
lock, and every Map but Publish's runs with ``MaxConcurrency`` 1, so no training or transform job
runs beside a Lambda either), and around each call: ``gc.collect()`` and glibc's ``malloc_trim(0)``
(free heap pages go back to the kernel, so the call cannot silently reuse memory freed earlier),
read ``VmRSS``, reset the high-water mark (``echo 5 > /proc/self/clear_refs``), call, read
``VmHWM``. The increase ``VmHWM - VmRSS`` is what the call added at its peak. A deployed worker also
holds the interpreter, the handler module and its libraries: that baseline is measured once per
function in a fresh interpreter that imports the handler and numpy, scipy.sparse, orjson and boto3
with both clients (``VmHWM`` at exit). Estimated worker peak = baseline + increase. It errs high:
moto's side of each S3 request (the request and response bodies, objects below moto's spool size)
counts too, while on AWS it is another machine's memory. The deployed memory per function comes from
``infra.functions.FUNCTION_SPECS`` and ``recpipe:functionMemoryMb`` in cdk.json (read in a
subprocess: importing aws_cdk is heavy); 3,008 MB when that fails.

The Publish children (``PublishShard``) are the exception: a 1M-user run has 40 of them, and
dynalite takes their rows at ~1,000/s, so they run ``--publish-concurrency`` (2) at a time, which
lets one rank while the other's rows are written, unmeasured; after the run the shard with the most
rows of each kind (users, items) is invoked again, alone and measured (it rewrites the very same
rows: the child is idempotent). ``--publish-concurrency 1`` measures every child in the run instead.

**Publish projection.** Seconds per user of one Publish child alone (the replay, or the children's
total time over the users they published), so a ``processing.users_per_shard`` shard takes
``shard_s``; at N users, ``ceil(N / users_per_shard)`` shards run ``publish.max_concurrency`` at a
time (the run's configured value, not the local one), and the whole cannot beat a fresh on-demand
table's 4,000 write units/s: projected = max(waves x shard_s, rows x units per row / 4000), rows = N
users + the measured item rows, units per row = ceil(measured size of a user row / 1 KB). The local
shard time includes dynalite's ~1,000-2,000 writes/s, so the compute side errs high.

**Check.** The DynamoDB row count of the run's version (a COUNT scan of ``user#*`` / ``v#<run>``)
must equal the manifest's user count and the generated user count: every user published.

Ends with ``RESULT users=... shards=... max_worker_rss_mb=... publish_s=... projected_publish_min_10m=...
projected_publish_min_100m=... max_rss_share_of_deployed=... all_published=... fits=... wall_s=...``
(the share: the largest worker peak over the memory that worker is deployed with, the baseline a
worker must stay under).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOPIC_SHARE = 0.6
MIN_ROWS_PER_USER = 3
WRITES_PER_S = 4000           # a fresh on-demand table's write throughput before it scales out
DEFAULT_LAMBDA_MB = 3008
CHEAP_CONFIG: dict[str, Any] = {
    "processing.negative_rounds": 1,
    "processing.negatives_per_positive": 1,
    "processing.context_items": 0,
    "fm.epochs": 1,
}
# Memory-measured functions and how their worker count is described.
MEASURED = ("Repackage", "Evaluate", "PublishShard", "Publish")


# -- data -----------------------------------------------------------------------------------------

def user_counts(rng: np.random.Generator, n_users: int, n_rows: int, cap: int) -> np.ndarray:
    """Rows per user: Pareto-tailed, in [min(3, mean), cap], summing to exactly ``n_rows``."""
    low = max(1, min(MIN_ROWS_PER_USER, n_rows // n_users))
    if n_rows < low * n_users or n_rows > cap * n_users:
        raise ValueError(f"{n_rows} interactions cannot be spread over {n_users} users with "
                         f"{low}..{cap} each.")
    raw = rng.pareto(1.5, n_users)
    counts = np.clip(low + np.floor(raw * ((n_rows - low * n_users) / raw.sum())), low, cap).astype(np.int64)
    deficit = n_rows - int(counts.sum())
    while deficit != 0:  # spread the rounding error over random users, within [low, cap]
        pick = rng.integers(0, n_users, min(abs(deficit), n_users))
        counts[pick] += 1 if deficit > 0 else -1
        np.clip(counts, low, cap, out=counts)
        deficit = n_rows - int(counts.sum())
    return counts


@dataclass
class Synthetic:
    """Distinct (user, item) pairs (0-based int64, grouped by user) and the latent topics behind them."""

    users: np.ndarray
    items: np.ndarray
    user_topic: np.ndarray   # per user
    item_topic: np.ndarray   # per item


def generate(n_users: int, n_items: int, n_rows: int, *, topics: int, seed: int = 0) -> Synthetic:
    """``n_rows`` distinct pairs of ``n_users`` users x ``n_items`` items, as the module docstring says.

    See the module docstring for the laws. Vectorised: each round draws an item for every row still
    to fill and keeps those not already held by their user (sort by ``user * n_items + item``)."""
    rng = np.random.default_rng(seed)
    topics = max(1, min(topics, n_items))
    per_topic = n_items // topics
    # Heavy users hold up to 5 % of the items (at most 5,000), more only when the mean asks for it.
    cap = min(n_items, max(min(n_items // 20, 5000), 2 * math.ceil(n_rows / n_users)))
    counts = user_counts(rng, n_users, n_rows, cap)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    user_topic = rng.integers(0, topics, n_users)
    item_of_rank = rng.permutation(n_items).astype(np.int64)

    def zipf_cdf(n: int) -> np.ndarray:
        cdf = np.cumsum(1.0 / (np.arange(n) + 10.0))
        cdf /= cdf[-1]
        return cdf

    global_cdf, topic_cdf = zipf_cdf(n_items), zipf_cdf(per_topic)

    def draw(rows: np.ndarray) -> np.ndarray:
        from_topic = rng.random(len(rows)) < TOPIC_SHARE
        rank = np.searchsorted(global_cdf, rng.random(len(rows)))
        in_topic = np.searchsorted(topic_cdf, rng.random(int(from_topic.sum())))
        rank[from_topic] = in_topic * topics + user_topic[users[rows[from_topic]]]
        return item_of_rank[np.minimum(rank, n_items - 1)]

    items = draw(np.arange(len(users)))
    todo = np.arange(len(users))
    for _ in range(200):
        keys = users * n_items + items
        order = np.argsort(keys, kind="stable")
        repeated = order[1:][keys[order[1:]] == keys[order[:-1]]]
        if len(repeated) == 0:
            break
        todo = repeated
        items[todo] = draw(todo)
    else:
        raise RuntimeError(f"{len(todo)} pairs still repeat after 200 rounds: too few items for the "
                           "most active users.")
    item_topic = np.empty(n_items, dtype=np.int64)
    item_topic[item_of_rank] = np.arange(n_items) % topics
    return Synthetic(users, items, user_topic, item_topic)


def write_parquet(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user_id": (users + 1).astype(np.int64), "item_id": (items + 1).astype(np.int64)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=1 << 20)
    tmp.replace(path)


# -- measuring one Lambda invocation ----------------------------------------------------------------

def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``; a no-op where there is no glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def call() -> None:
        trim(0)
    return call


@dataclass
class Invocation:
    function: str
    seconds: float
    increase_mb: float | None      # None: not measured (ran beside others)
    ok: bool
    kind: str | None = None
    shard: int | None = None
    rows: int | None = None
    replay: bool = False
    event: Any = None              # kept for unmeasured calls, to replay one measured


@dataclass
class Meter:
    """Wraps handlers so that each invocation runs alone and records its peak RSS increase; the
    functions in ``concurrent`` run unserialised and unmeasured (one of them is replayed later)."""

    concurrent: frozenset[str] = frozenset()
    invocations: list[Invocation] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _trim: Callable[[], None] = field(default_factory=_malloc_trim)

    def wrap(self, logical: str, dotted: str) -> Callable[[Any, Any], Any]:
        from recpipe.local.lambdas import load_handler

        def handler(event: Any, context: Any) -> Any:
            function = load_handler(dotted)  # re-imported as the engine would (environment check)
            if logical in self.concurrent:
                started = time.perf_counter()
                ok, result = False, None
                try:
                    result = function(event, context)
                    ok = True
                    return result
                finally:
                    kind, shard = _shard_of(event)
                    self.invocations.append(Invocation(logical, time.perf_counter() - started, None, ok,
                                                       kind, shard, _rows_of(result), event=event))
            return self.measured(logical, function, event, context)
        return handler

    def measured(self, logical: str, function: Callable[[Any, Any], Any], event: Any, context: Any,
                 *, replay: bool = False) -> Any:
        with self._lock:
            gc.collect()
            self._trim()
            before = _status_kb("VmRSS")
            _reset_hwm()
            started = time.perf_counter()
            ok, result = False, None
            try:
                result = function(event, context)
                ok = True
                return result
            finally:
                peak = _status_kb("VmHWM")
                kind, shard = _shard_of(event)
                self.invocations.append(Invocation(
                    logical, time.perf_counter() - started, max(0, peak - before) / 1024, ok,
                    kind, shard, _rows_of(result), replay=replay))

    def replay(self, logical: str, dotted: str, event: Any) -> Any:
        """Invoke again, alone and measured (a Publish child rewrites the very same rows)."""
        from recpipe.local.lambdas import LambdaContext, load_handler

        context = LambdaContext(function_name=logical, invoked_function_arn=f"local:{logical}")
        event = json.loads(json.dumps(event))
        return self.measured(logical, load_handler(dotted), event, context, replay=True)


def _shard_of(event: Any) -> tuple[str | None, int | None]:
    """``kind``/``shard`` of a Publish child's event (at the top or one level down)."""
    if not isinstance(event, Mapping):
        return None, None
    for candidate in (event, *[v for v in event.values() if isinstance(v, Mapping)]):
        if "shard" in candidate and isinstance(candidate.get("shard"), int):
            return (str(candidate.get("kind")) if candidate.get("kind") else None), int(candidate["shard"])
    return None, None


def _rows_of(result: Any) -> int | None:
    if isinstance(result, Mapping):
        for key in ("rows", "users_written", "items_written"):
            if isinstance(result.get(key), int):
                return int(result[key])
    return None


_BASELINE_CODE = """
import importlib, json, os, sys
sys.path.insert(0, sys.argv[2])
importlib.import_module(sys.argv[1])
import numpy, scipy.sparse, boto3
try:
    import orjson
except ImportError:
    pass
boto3.client("s3"); boto3.client("dynamodb")
with open("/proc/self/status") as f:
    print(json.dumps({l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmHWM", "VmRSS"))}))
"""


def baseline_mb(dotted: str) -> float:
    """Peak RSS of a fresh interpreter that imported the handler's module and its libraries."""
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "RECPIPE_TABLE": "t", "RECPIPE_BUCKET": "b",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _BASELINE_CODE, dotted.rpartition(".")[0], str(ROOT)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  (baseline of {dotted} failed: {out.stderr.strip().splitlines()[-1:]}; using 0)")
        return 0.0
    return float(json.loads(out.stdout.strip().splitlines()[-1])["VmHWM"]) / 1024


_MEMORY_CODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from infra.functions import DEFAULT_SPEC, FUNCTION_SPECS
over = json.load(open(sys.argv[1] + "/cdk.json")).get("context", {}).get("recpipe:functionMemoryMb", {})
out = {k: v.memory_mb for k, v in FUNCTION_SPECS.items()}
out.update({k: int(v) for k, v in (over or {}).items()})
out["*"] = DEFAULT_SPEC.memory_mb
print(json.dumps(out))
"""


def deployed_memory_mb() -> dict[str, int]:
    """Function -> deployed memory (MB), ``"*"`` for the default; {} when infra cannot be read."""
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CODE, str(ROOT)], capture_output=True, text=True,
                         check=False, env=env)
    if out.returncode != 0:
        print("  (could not read infra.functions; assuming 3,008 MB for every function)")
        return {}
    return {str(k): int(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


# -- the run --------------------------------------------------------------------------------------

def serial_definition(publish_concurrency: int) -> str:
    """The committed ASL with every Map at MaxConcurrency 1 but the DISTRIBUTED one (Publish), which
    gets ``publish_concurrency`` (see the module docstring)."""
    from workflows import definition as wf

    machine = wf.load_definition()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("Type") == "Map":
                processor = node.get("ItemProcessor") or {}
                distributed = processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"
                node.pop("MaxConcurrencyPath", None)
                node["MaxConcurrency"] = publish_concurrency if distributed else 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(machine)
    return json.dumps(machine)


def count_rows(ddb: Any, table: str, run_id: str) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Rows of version ``run_id`` by key prefix (``user#``, ``item#``, ...) in one scan of every
    page, and the key of one user row."""
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": "pk, sk"}
    counts: dict[str, int] = defaultdict(int)
    sample: dict[str, Any] | None = None
    version = f"v#{run_id}"
    while True:
        page = ddb.scan(**kwargs)
        for item in page.get("Items", []):
            if item["sk"]["S"] == version:
                prefix = item["pk"]["S"].split("#", 1)[0] + "#"
                counts[prefix] += 1
                if sample is None and prefix == "user#":
                    sample = {"pk": item["pk"], "sk": item["sk"]}
        if "LastEvaluatedKey" not in page:
            return dict(counts), sample
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def item_bytes(value: Any) -> int:
    """Approximate DynamoDB size of an attribute value (low-level JSON form), per the rules of
    "Item sizes and formats": strings by UTF-8 length, numbers ~1 byte per 2 digits + 1, lists and
    maps 3 bytes + 1 per element, names by length."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind == "S":
            return len(str(inner).encode())
        if kind == "N":
            return len(str(inner).lstrip("-").replace(".", "")) // 2 + 1
        if kind == "BOOL" or kind == "NULL":
            return 1
        if kind == "L":
            return 3 + sum(1 + item_bytes(v) for v in inner)
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + item_bytes(v) for k, v in inner.items())
    return len(json.dumps(value))


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(before)


def read_json(engine: Any, bucket: str, key: str) -> Any:
    return json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def state_table(outcome: Any) -> list[tuple[str, int, float, float]]:
    """(state name, runs, total s, max s) in order of first entry."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for state in outcome.states:
        if state.seconds is not None:
            by_name[state.name].append(state.seconds)
    return [(name, len(s), sum(s), max(s)) for name, s in by_name.items()]


def project_publish(n_users: int, *, users_per_shard: int, concurrency: int, shard_s: float,
                    item_rows: int, write_units_per_row: int = 1) -> tuple[float, float, float]:
    """(projected minutes, compute-bound minutes, write-bound minutes) at ``n_users``."""
    shards = math.ceil(n_users / users_per_shard)
    compute = math.ceil(shards / concurrency) * shard_s
    writes = (n_users + item_rows) * write_units_per_row / WRITES_PER_S
    return max(compute, writes) / 60, compute / 60, writes / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=None, help="default: 20 per user")
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        help="extra config override key=value (JSON values)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="engine work directory (default .recpipe/bench/scale-run-<users>; wiped first)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument("--publish-concurrency", type=int, default=2,
                        help="local MaxConcurrency of the Publish Map; above 1 its children run unmeasured "
                             "and the largest users shard is replayed alone, measured (default 2)")
    args = parser.parse_args()
    n_users, n_items = args.users, args.items
    n_rows = args.interactions or 20 * n_users
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    name = f"scale-{n_users}-{n_items}-{n_rows}-t{args.topics}-s{args.seed}.parquet"
    data = ROOT / ".recpipe" / "bench" / name
    if data.exists():
        print(f"using cached {data.name} ({data.stat().st_size / 2**20:.0f} MiB)")
    else:
        t0 = time.perf_counter()
        synthetic = generate(n_users, n_items, n_rows, topics=args.topics, seed=args.seed)
        write_parquet(data, synthetic.users, synthetic.items)
        del synthetic
        print(f"generated {data.name} ({data.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

    overrides: dict[str, Any] = dict(CHEAP_CONFIG)
    for assignment in args.assignments:
        key, _, value = assignment.partition("=")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    from recpipe import config as cfg

    resolved = cfg.resolve(overrides)

    from recpipe.executions.history import run_id_of
    from recpipe.local.engine import EngineOptions, LocalEngine
    from workflows import definition as wf

    functions = {name: (v if isinstance(v, str) else str(v)) for name, v in wf.FUNCTIONS.items()}
    concurrent = frozenset({"PublishShard"}) if args.publish_concurrency > 1 else frozenset()
    meter = Meter(concurrent=concurrent)
    workdir = args.workdir or ROOT / ".recpipe" / "bench" / f"scale-run-{n_users}"
    shutil.rmtree(workdir, ignore_errors=True)
    wrapped = {logical: meter.wrap(logical, dotted) for logical, dotted in functions.items()}
    options = EngineOptions(workdir=workdir, definition=serial_definition(args.publish_concurrency),
                            lambda_overrides=wrapped)
    started = time.perf_counter()
    with _quiet_logs(), LocalEngine(options) as engine:
        engine.put_data("input", interactions=data)
        arn = engine.start(overrides)
        print(f"execution {arn.rsplit(':', 1)[-1]} started; states as they end:", flush=True)
        seen: set[tuple[str, str]] = set()

        def on_update(outcome: Any) -> None:
            for state in outcome.states:
                key = (state.label, str(state.started))
                if state.ended is not None and key not in seen and state.type in ("Task", "Map"):
                    seen.add(key)
                    print(f"  {time.perf_counter() - started:7.0f} s  {state.label}: {state.status} "
                          f"in {state.seconds:.1f} s", flush=True)

        outcome = engine.wait(arn, on_update=on_update, poll_s=2.0)
        wall = time.perf_counter() - started
        run_id = run_id_of(outcome)
        print(f"\nexecution {outcome.status} in {wall:.0f} s (run {run_id})")
        if outcome.status != "SUCCEEDED":
            failed = outcome.failed_state
            where = failed.label if failed else "?"
            print(f"FAILED at {where}: {outcome.error}: {str(outcome.cause)[:2000]}")
        by_kind: dict[str | None, list[Invocation]] = defaultdict(list)
        for inv in meter.invocations:
            if inv.event is not None and inv.ok:
                by_kind[inv.kind].append(inv)
        for kind, invs in by_kind.items():  # the largest shard of each kind (users, items)
            largest = max(invs, key=lambda i: i.rows or 0)
            print(f"replaying {largest.function} {kind} shard {largest.shard} ({largest.rows} rows) alone, "
                  "measured", flush=True)
            meter.replay(largest.function, functions[largest.function], largest.event)
        bucket = options.bucket
        manifest = read_json(engine, bucket, f"runs/{run_id}/processed/manifest.json") if run_id else {}
        ddb = engine.results_client()
        t0 = time.perf_counter()
        rows, sample = count_rows(ddb, options.table, run_id) if run_id else ({}, None)
        user_rows, item_rows = rows.get("user#", 0), rows.get("item#", 0)
        count_s = time.perf_counter() - t0
        row_bytes = 0
        if sample is not None:
            item = ddb.get_item(TableName=options.table, Key=sample)["Item"]
            row_bytes = sum(len(k.encode()) + item_bytes(v) for k, v in item.items())
    processing_peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    engine_peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # -- per state ---------------------------------------------------------------------------
    print("\nstate                                 runs   total s     max s")
    for name, runs, total, longest in state_table(outcome):
        print(f"  {name:36s} {runs:4d} {total:9.1f} {longest:9.1f}")
    print(f"processing job peak RSS (child process): {processing_peak_gb:.2f} GB; this process "
          f"(moto, training and transform stand-ins, Lambdas): {engine_peak_gb:.2f} GB")

    # -- workers -----------------------------------------------------------------------------
    memory = deployed_memory_mb()
    print("\nLambda workers (estimated peak = fresh-interpreter baseline + measured increase):")
    print("  function          calls  max s   baseline MB  max increase MB  est. peak MB  deployed MB")
    max_worker = 0.0
    max_share = 0.0   # the largest worker peak / its deployed memory
    fits = True
    by_function: dict[tuple[str, str | None], list[Invocation]] = defaultdict(list)
    for inv in meter.invocations:
        by_function[inv.function, inv.kind].append(inv)
    baselines: dict[str, float] = {}
    for (name, kind), invs in by_function.items():
        label = f"{name}[{kind}]" if kind else name
        increases = [i.increase_mb for i in invs if i.increase_mb is not None]
        if not increases:
            print(f"  {label:16s} {len(invs):6d}  (not measured)")
            continue
        if name not in baselines:
            baselines[name] = baseline_mb(functions[name])
        base = baselines[name]
        peak = base + max(increases)
        deployed = memory.get(name, memory.get("*", DEFAULT_LAMBDA_MB))
        if name in MEASURED:
            max_worker = max(max_worker, peak)
        max_share = max(max_share, peak / deployed)
        ok = peak <= deployed
        fits &= ok
        calls = len([i for i in invs if not i.replay])
        note = f"  (measured: {len(increases)} replayed)" if any(i.replay for i in invs) else ""
        print(f"  {label:16s} {calls:6d} {max(i.seconds for i in invs):6.1f} {base:13.0f} "
              f"{max(increases):16.0f} {peak:13.0f} {deployed:12d}{'' if ok else '  OVER'}{note}")

    # -- publish -------------------------------------------------------------------------------
    counts = manifest.get("counts", {}) if isinstance(manifest, Mapping) else {}
    manifest_users = int(counts.get("users", 0) or 0)
    ups = int(resolved.get("processing.users_per_shard", 25000) or 25000)
    concurrency = int(resolved.get("publish.max_concurrency", 8) or 8)
    shard_invs = [i for i in meter.invocations if i.function in ("PublishShard", "Publish") and i.ok
                  and i.kind in (None, "users") and not i.replay]
    n_shards = len(shard_invs)
    # Seconds per user of one worker alone: the replay when the children ran side by side.
    alone = [i for i in meter.invocations if i.replay and i.ok and i.kind in (None, "users")] or shard_invs
    published = sum(i.rows or 0 for i in alone)
    shard_total_s = sum(i.seconds for i in alone)
    wru = max(1, math.ceil(row_bytes / 1024))
    publish_s = sum(total for name, _, total, _ in state_table(outcome) if name in ("Publish", "Commit"))
    print(f"\npublish: {n_shards} user shard worker(s), {sum(i.seconds for i in shard_invs):.0f} s in them, "
          f"{publish_s:.0f} s for the Publish/Commit states; DynamoDB rows of the version: "
          f"{user_rows:,} users (+{item_rows:,} items), manifest {manifest_users:,} users, "
          f"generated {n_users:,} (count scan {count_s:.0f} s)")
    if row_bytes:
        print(f"a user row is ~{row_bytes:,} bytes: {math.ceil(row_bytes / 1024)} write request unit(s)")
    every_user = user_rows == manifest_users == n_users
    print("every user published" if every_user else "NOT every user published")
    projected: dict[int, float] = {}
    if published and shard_total_s:
        shard_s = shard_total_s / published * ups
        print(f"per shard of {ups:,} users, one worker alone: {shard_s:.1f} s; projection at "
              f"publish.max_concurrency={concurrency} and {WRITES_PER_S:,} write units/s, {wru} per row "
              "(max of the two bounds):")
        for target in (10_000_000, 100_000_000):
            total, compute, writes = project_publish(target, users_per_shard=ups, concurrency=concurrency,
                                                     shard_s=shard_s, item_rows=item_rows,
                                                     write_units_per_row=wru)
            projected[target] = total
            print(f"  {target:>11,} users: {total:7.1f} min (workers {compute:.1f} min, table writes "
                  f"{writes:.1f} min)")
    print(f"workers fit their deployed memory: {'yes' if fits else 'NO'}")
    p10m, p100m = projected.get(10_000_000, float("nan")), projected.get(100_000_000, float("nan"))
    print(f"RESULT users={n_users} shards={n_shards} max_worker_rss_mb={max_worker:.0f} "
          f"publish_s={publish_s:.0f} projected_publish_min_10m={p10m:.1f} "
          f"projected_publish_min_100m={p100m:.1f} "
          f"max_rss_share_of_deployed={max_share:.2f} all_published={int(every_user)} fits={int(fits)} "
          f"wall_s={wall:.0f}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if outcome.status == "SUCCEEDED" and every_user and fits else 1


if __name__ == "__main__":
    sys.exit(main())
