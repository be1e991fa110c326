"""``python -m toolguard``: the ``toolguard`` command.

With ``agent-toolguard-core`` alone (no click, no rich) it says what to install, as one
``Error:`` line and exit code 2, like the command's other errors.
"""

import sys

from .errors import MissingDependency


def run() -> None:
    """Run the command; a missing ``cli`` extra is one ``Error:`` line, exit code 2."""
    try:
        from .cli import main
    except MissingDependency as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    run()
