"""`python -m tests.e2e.servers`: the internet servers, now in clrk_cli.demo.servers (the
`make run` demo uses them too)."""

from clrk_cli.demo.servers import *  # noqa: F403
from clrk_cli.demo.servers import main

if __name__ == "__main__":
    main()
