"""``python -m panopticlab`` runs the command line (also under ``torchrun -m panopticlab``)."""

import sys

from panopticlab.cli import main

sys.exit(main())
