"""``python -m latbench.cli`` runs the command line (same as the ``latbench`` script)."""
import sys

from latbench.cli import main

sys.exit(main())
