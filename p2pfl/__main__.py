"""``python -m p2pfl`` runs the command line."""

import sys

from p2pfl.cli.main import main

sys.exit(main())
