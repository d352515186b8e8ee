"""The deployed stack seen from the CLI: resource names from CloudFormation outputs, executions by
run id, and boto3 errors turned into messages that say what to pass or fix.

Entry points: :func:`recpipe.remote.aws.resolve_target`, :func:`recpipe.remote.aws.find_execution`.
Importing this package is cheap: :mod:`recpipe.remote.aws` imports boto3 when used.
"""
