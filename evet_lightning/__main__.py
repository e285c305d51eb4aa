"""``python -m evet_lightning``: the ``evet-lightning`` command."""

import sys

from evet_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
