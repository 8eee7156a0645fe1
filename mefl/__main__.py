"""``python -m mefl``: the same as the ``mefl`` command."""

import sys

from .cli import main

sys.exit(main())
