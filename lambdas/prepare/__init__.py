"""Prepare: validate the execution input, resolve the config, derive the run id, take the lock."""
