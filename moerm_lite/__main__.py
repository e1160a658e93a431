"""``python -m moerm_lite`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
