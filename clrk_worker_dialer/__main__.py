import sys

import click

from clrk_worker_dialer.command import dialer

# Usage errors exit 1 as every other invalid input does, not click's 2.
try:
    dialer.main(args=sys.argv[1:], prog_name="clrk dialer", standalone_mode=False)
except click.ClickException as exc:
    exc.show()
    sys.exit(1)
except click.Abort:
    sys.exit(1)
