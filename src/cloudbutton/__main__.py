"""``python -m cloudbutton``: the same as the ``cloudbutton`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
