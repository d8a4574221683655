"""``python -m npvit.train``: the training program."""

import sys

try:
    from .command import main
except KeyboardInterrupt:  # Ctrl-C while the program is still importing: nothing started, nothing to save
    sys.exit(130)

sys.exit(main())
