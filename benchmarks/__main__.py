"""
Run a benchmark profile or configuration, or report on its results::

    python -m benchmarks quick --workers 2          # = art-gifd bench quick --workers 2
    python -m benchmarks my-grid.yaml --ray-address auto
    python -m benchmarks report bench-out/quick.jsonl   # = art-gifd bench-report bench-out/quick.jsonl

Every option of ``art-gifd bench`` / ``art-gifd bench-report`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys

from art_gifd.cli import main


def run(argv: list[str]) -> int:
    """Dispatch ``report …`` to ``art-gifd bench-report`` and anything else to ``art-gifd bench``."""
    if argv and argv[0] == "report":
        return main(["bench-report", *argv[1:]])
    return main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
