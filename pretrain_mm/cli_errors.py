"""A user's mistake on the command line of a tool (export, caption): one line, `error: ...`, exit status 2;
HYDRA_FULL_ERROR=1 (the trainer's switch, __main__.py) shows the traceback instead."""

import os
import sys


def one_line_error(error: ValueError) -> int:
    """Print `error` as one line on stderr and return the exit status 2, or re-raise it with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    return 2
