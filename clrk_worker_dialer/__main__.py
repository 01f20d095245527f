import sys

from clrk.cli import main

sys.exit(main(["dialer", *sys.argv[1:]]))
