"""``python -m latbench``: the command line."""
import sys

from latbench.cli import main

sys.exit(main())
