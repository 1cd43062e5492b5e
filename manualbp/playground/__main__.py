"""``python -m manualbp.playground``: see :func:`manualbp.playground.main`."""

import sys

from manualbp.playground import main

if __name__ == "__main__":
    sys.exit(main())
