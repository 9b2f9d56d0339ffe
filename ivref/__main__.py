"""``python -m ivref``: the ``ivref`` command (cli.py), for an environment whose scripts folder
is not on PATH."""

import sys

from ivref.cli import main

if __name__ == "__main__":
    sys.exit(main())
