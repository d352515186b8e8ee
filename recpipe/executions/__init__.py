"""Step Functions executions as recpipe shows them, local (moto) and deployed (AWS) alike.

- :mod:`recpipe.executions.history`: an execution's history events -> one :class:`StateRun` per
  state run, an :class:`ExecutionOutcome`, the run id it carries, readable causes;
- :mod:`recpipe.executions.follow`: poll an execution until it ends (the live progress lines);
- :mod:`recpipe.executions.records`: the record of each execution under ``<workdir>/executions/``
  (``recpipe status``), and execution names.

The local engine (:mod:`recpipe.local`) and the ``--aws`` commands both use these; nothing here
imports the local engine.
"""
