"""`python -m clrk_cli ...` is the `clrk` command."""

import sys

from clrk_cli import main

sys.exit(main())
