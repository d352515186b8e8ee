"""Entry point: ``python3 <code>/workflows/processing/__main__.py`` (the container) or
``python -m workflows.processing``.

Run as a file, Python puts this file's directory first on ``sys.path``; the code root (two levels
up, where ``recpipe/`` and ``workflows/`` are staged) replaces it so that the package imports as a
package and its module names cannot shadow anything.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from workflows.processing.step import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
