"""`scaler simulate`, the backtest: recorded metrics (a CSV file or Prometheus range queries, `sources`)
are replayed through a pool's policy with a simulated clock and pool by the service's own evaluation
code (`backtest`), and shown as a timeline and a summary (`report`) and optionally a PNG (`plot`);
`cli` is the command line and `recording` the data and times they share. This package only re-exports
the names callers use, so that `from scaler.simulate import simulate` keeps working.
"""

from scaler.simulate.backtest import Evaluation, Happening, Options, Result, simulate
from scaler.simulate.cli import add_arguments, cmd_simulate, load_pool, main
from scaler.simulate.plot import plot
from scaler.simulate.recording import Recorded, Recording, parse_time
from scaler.simulate.report import render_text, summarize, to_json
from scaler.simulate.sources import fetch_prometheus, read_csv

__all__ = [
    "Evaluation",
    "Happening",
    "Options",
    "Recorded",
    "Recording",
    "Result",
    "add_arguments",
    "cmd_simulate",
    "fetch_prometheus",
    "load_pool",
    "main",
    "parse_time",
    "plot",
    "read_csv",
    "render_text",
    "simulate",
    "summarize",
    "to_json",
]
