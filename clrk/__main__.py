"""`python -m clrk ...` is the `clrk` command."""

import sys

from clrk.cli import main

sys.exit(main())
