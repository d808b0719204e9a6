"""`python -m server ...` is the `pageloan` command."""

import sys

from .cli import main

sys.exit(main())
