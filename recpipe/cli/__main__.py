"""``python -m recpipe.cli``."""

from recpipe.cli import app

app()
