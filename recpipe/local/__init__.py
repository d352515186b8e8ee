"""The local engine: the deployed state machine run on this machine (moto + dynalite).

Entry points: :class:`recpipe.local.engine.LocalEngine` (``with LocalEngine(EngineOptions(...)) as e:
e.put_data(...); arn, outcome = e.run(overrides)``), :mod:`recpipe.local.moto_hook` (Task states to
local handlers), :mod:`recpipe.local.sagemaker` / :mod:`recpipe.local.lambdas` (the handlers),
:mod:`recpipe.local.dynamodb` (dynalite), :mod:`recpipe.local.s3store` (the bucket's mirror).
What the ``--aws`` commands share with it lives outside: :mod:`recpipe.executions` (histories,
following, records) and :mod:`recpipe.results` (reading the table).
Importing this package is cheap: the submodules import moto and boto3 when used.
"""
