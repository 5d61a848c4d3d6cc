"""``python -m homodyne``: the ``homodyne`` command, its stop signals handled as the console
script's are (the package's ``__init__`` set them before this file runs)."""

import sys

from homodyne.entry import main

if __name__ == "__main__":
    sys.exit(main())
