"""`python -m scaler.simulate …`, the same as `scaler simulate …`."""

import sys

from scaler.simulate.cli import main

sys.exit(main())
