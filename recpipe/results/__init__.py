"""The results table's logic shared by the Lambdas and the CLI (``recpipe.tables`` has the layout).

- :mod:`recpipe.results.versions`: a version's life (``writing`` -> ``complete``), the active
  pointer's conditional flip, and :func:`~recpipe.results.versions.activate` (rollback);
- :mod:`recpipe.results.lock`: the run lock (taken by Prepare, released by Release and the CLI);
- :mod:`recpipe.results.read`: reading for the CLI (pointer, lock, a version's rows, the versions);
- :mod:`recpipe.results.exceptions`: their errors.

The Lambdas (Prepare, PublishShard, Commit, Release) call these; the CLI (``recpipe rollback``,
``recpipe unlock``) calls the same functions, so the library never imports ``lambdas``.
"""
