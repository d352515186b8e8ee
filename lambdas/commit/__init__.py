"""Commit: after the Publish Map, check every shard reported, complete the version, flip the pointer."""
