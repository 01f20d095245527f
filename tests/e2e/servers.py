"""`python -m tests.e2e.servers`: the internet servers, now in clrk.demo.servers (the
`make run` demo uses them too)."""

from clrk.demo.servers import *  # noqa: F403
from clrk.demo.servers import main

if __name__ == "__main__":
    main()
