"""Publish: top-N per user of the serve variant, written as a new version, then the pointer flip."""
