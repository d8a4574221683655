"""``python -m npvit.train``: the training program."""

import sys

from .command import main

sys.exit(main())
