"""`python -m scaler.simulate …`, the same as `scaler simulate …`."""

import sys

from scaler.simulate.backtest import main

sys.exit(main())
