"""``python -m rethink_d2.solver [SPEC ...] [--batch B ...]``: print resolved schedules."""

import sys

from .table import main

if __name__ == "__main__":
    sys.exit(main())
