"""The ``recpipe`` command line (Typer + Rich); the entry point is ``recpipe.cli:app``.

Every command takes ``--workdir`` (default ``.recpipe``): the local state it reads or writes
(MovieLens cache, the S3 mirror ``s3/``, the dynalite data ``dynamodb/``, execution records
``executions/``). With ``--aws``, ``run``, ``status``, ``recommend``, ``export``, ``versions``,
``rollback`` and ``unlock`` act on the deployed stack instead (default boto3 credentials; the table
and state machine from ``--table`` / ``--state-machine-arn`` or the stack's outputs,
:mod:`recpipe.remote.aws`). Exit codes: 0 success, 1 a failed pipeline run (or a lock/pointer that
changed under the command), 2 bad usage or input (unknown user, invalid ``--set``, missing record,
a version that cannot be activated, a lock whose run may still be running without ``--force``).

Layout: :mod:`~recpipe.cli.core` (the app, consoles, shared options, :func:`~recpipe.cli.core.command`),
:mod:`~recpipe.cli.display` (how things are shown), :mod:`~recpipe.cli.target` (local table or the
deployed stack), then one module per command group, listed in :data:`COMMAND_MODULES`. A new
command group is a new module here that decorates its commands with ``@command`` and is added to
:data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import importlib

from recpipe.cli.core import app

# Command modules, in the order ``recpipe --help`` lists their commands (importing one registers them).
COMMAND_MODULES: tuple[str, ...] = ("run", "results", "serve", "report", "status", "versions", "lock",
                                    "definition")

for _module in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["COMMAND_MODULES", "app"]
