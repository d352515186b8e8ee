"""The local DynamoDB: a real server (``dynalite`` from npm) on a loopback port, or any endpoint.

:class:`Dynalite` starts ``node_modules/.bin/dynalite --host 127.0.0.1 --port N --path DIR
--createTableMs 0`` on a free port, waits until it answers, and stops it by its PID (the whole
process group, since the npm shim may fork ``node``). Data survive restarts (LevelDB under
``DIR``). :func:`dynamodb_endpoint` is the context manager the CLI and the engine use: it yields an
endpoint URL, starting dynalite only when none was given, and makes sure the results table exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recpipe.local.exceptions import DynamoDBServerError
from recpipe.tables import create_table_kwargs

DEFAULT_TABLE = "recpipe-results"
REGION = "us-east-1"
_START_TIMEOUT_S = 20.0


def find_dynalite(start: Path | None = None) -> Path:
    """Locate the ``dynalite`` executable: ``$RECPIPE_DYNALITE``, ``node_modules/.bin`` up from ``start``
    (default: the current directory, then this package's checkout), then ``PATH``."""
    env = os.environ.get("RECPIPE_DYNALITE")
    if env:
        return Path(env)
    roots = [start or Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in roots:
        for parent in [root.resolve(), *root.resolve().parents]:
            candidate = parent / "node_modules" / ".bin" / "dynalite"
            if candidate.exists():
                return candidate
    found = shutil.which("dynalite")
    if found:
        return Path(found)
    raise DynamoDBServerError(
        "dynalite was not found (looked for node_modules/.bin/dynalite and on PATH): run 'make install' "
        "(npm ci), or pass --dynamodb-endpoint URL for another DynamoDB (e.g. DynamoDB Local).")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dynalite:
    """A dynalite server process; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, path: Path, *, port: int | None = None, executable: Path | None = None) -> None:
        self.path = Path(path)
        self.port = port or free_port()
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = self.path.parent / "dynalite.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Dynalite:
        executable = self.executable or find_dynalite()
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [str(executable), "--host", "127.0.0.1", "--port", str(self.port), "--path", str(self.path),
               "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_path.read_text(errors="replace")[-2000:]
                self.process = None
                raise DynamoDBServerError(
                    f"dynalite exited at start (command: {' '.join(cmd)}); its log {self._log_path}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise DynamoDBServerError(f"dynalite did not listen on port {self.port} within "
                                  f"{_START_TIMEOUT_S:.0f} s (log: {self._log_path}).")

    def stop(self) -> None:
        """Stop the server by its PID (its process group); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def __enter__(self) -> Dynalite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client(endpoint: str) -> Any:
    """A boto3 DynamoDB client for ``endpoint`` (dummy credentials: local servers accept any)."""
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="local", aws_secret_access_key="local")


def ensure_table(endpoint: str, table_name: str) -> bool:
    """Create the results table at ``endpoint`` if missing; return True when it was created."""
    ddb = client(endpoint)
    try:
        ddb.describe_table(TableName=table_name)
        return False
    except ddb.exceptions.ResourceNotFoundException:
        pass
    ddb.create_table(**create_table_kwargs(table_name))
    ddb.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
    return True


@contextlib.contextmanager
def dynamodb_endpoint(workdir: Path, *, endpoint: str | None = None,
                      table_name: str = DEFAULT_TABLE) -> Iterator[str]:
    """Yield a DynamoDB endpoint holding the results table: ``endpoint`` if given, else a dynalite
    started on ``<workdir>/dynamodb`` for the duration of the context (stopped on any exit)."""
    if endpoint:
        ensure_table(endpoint, table_name)
        yield endpoint
        return
    with Dynalite(Path(workdir) / "dynamodb") as server:
        ensure_table(server.endpoint, table_name)
        yield server.endpoint
