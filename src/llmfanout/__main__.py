"""``python -m llmfanout`` and the ``llmfanout`` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    from ._cli._main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
