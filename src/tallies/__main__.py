"""``python -m tallies``: the ``tallies`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
