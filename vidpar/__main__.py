"""``python -m vidpar ...``: the ``vidpar`` command (see ``vidpar.cli``)."""

import sys

from vidpar.cli import main

if __name__ == "__main__":
    sys.exit(main())
