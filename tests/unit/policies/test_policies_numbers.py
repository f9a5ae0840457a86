"""Numbers and durations of a policy file that would silently turn off what they configure: values
that are not finite (.inf, .nan, 1e999) and zeros where 0 makes no sense (`stale_after: 0` makes every
input stale). Each is refused, and the error names the line of the value: FILE:LINE:COL (read with
the config loader, scaler.yamlconf, as `scaler check` reads it). Zeros that mean something are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicyFile
from scaler import yamlconf
from scaler.errors import ConfigError

# Every number and duration of the model on a line of its own, so that a case can replace one.
POLICY = """\
pools:
  web:
    min: 1
    max: 4
    warmup: 30s
    stale_after: 30s
    inputs:
      sessions:
        source: haproxy
        metric: current_sessions
        window: 1m
        on_missing:
          treat_as: 0
      hottest:
        source: haproxy
        metric: current_sessions
        percentile: 95
    rules:
      - name: busy
        input: sessions
        above: 20
        for: 30s
        adjust: +1
      - name: quiet
        input: sessions
        below: 5
        adjust: -1
      - name: full
        input: hottest
        at_least: 95
        adjust: +1
      - name: empty
        input: hottest
        at_most: 1
        adjust: -1
      - name: track
        input: sessions
        target: 40
        tolerance: 10%
      - name: slow
        alarm: HighLatency
        for: 1m
        adjust: +2
    cooldown:
      scale_out: 1m
      scale_in: 5m
    stabilization:
      scale_in: 4m
      scale_out: 0s
    schedules:
      - name: day
        cron: "0 8 * * 1-5"
        duration: 10h
        min: 2
"""

FINITE = "Input should be a finite number"
FINITE_DURATION = "duration must be a finite number of seconds"
TREAT_AS = "pools.web.inputs.sessions.on_missing.treat_as"
PERCENTILE = "pools.web.inputs.hottest.percentile"
POSITIVE = "Input should be greater than 0"


def write(tmp_path: Path, old: str, new: str) -> tuple[Path, int, int]:
    """The policy with line `old` replaced by `new`; returns (path, line, column) of that line's key."""
    lines = POLICY.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line == old]
    lines[index] = new
    path = tmp_path / "web.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, index + 1, len(new) - len(new.lstrip(" -")) + 1


def test_the_template_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(POLICY)
    assert yamlconf.validate(PolicyFile, path).pools["web"].stale_after == 30


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        # durations: never infinite or NaN (YAML numbers, and strings past the float range)
        pytest.param("    stale_after: 30s", "    stale_after: 0", "pools.web.stale_after", POSITIVE,
                     id="stale_after: 0 (every input stale)"),
        pytest.param("    stale_after: 30s", "    stale_after: 0s", "pools.web.stale_after", POSITIVE,
                     id="stale_after: 0s"),
        pytest.param("    stale_after: 30s", "    stale_after: .inf", "pools.web.stale_after", FINITE_DURATION,
                     id="stale_after: .inf"),
        pytest.param("    stale_after: 30s", "    stale_after: .nan", "pools.web.stale_after", FINITE_DURATION,
                     id="stale_after: .nan"),
        pytest.param("    stale_after: 30s", "    stale_after: 1e999", "pools.web.stale_after", FINITE_DURATION,
                     id="stale_after: 1e999"),
        pytest.param("    stale_after: 30s", "    stale_after: -1", "pools.web.stale_after",
                     "duration must not be negative", id="stale_after: -1"),
        pytest.param("    stale_after: 30s", f"    stale_after: 1{'0' * 400}s", "pools.web.stale_after",
                     "duration is too long", id="stale_after: a string past the float range"),
        pytest.param("    warmup: 30s", "    warmup: .inf", "pools.web.warmup", FINITE_DURATION,
                     id="warmup: .inf (scale-in never)"),
        pytest.param("    warmup: 30s", "    warmup: .nan", "pools.web.warmup", FINITE_DURATION, id="warmup: .nan"),
        pytest.param("        window: 1m", "        window: .inf", "pools.web.inputs.sessions.window", FINITE_DURATION,
                     id="window: .inf"),
        pytest.param("        window: 1m", "        window: .nan", "pools.web.inputs.sessions.window", FINITE_DURATION,
                     id="window: .nan"),
        pytest.param("        for: 30s", "        for: .inf", "pools.web.rules.0.for", FINITE_DURATION,
                     id="threshold rule for: .inf (never fires)"),
        pytest.param("        for: 30s", "        for: .nan", "pools.web.rules.0.for", FINITE_DURATION,
                     id="threshold rule for: .nan"),
        pytest.param("        for: 1m", "        for: .inf", "pools.web.rules.5.for", FINITE_DURATION,
                     id="alarm rule for: .inf"),
        pytest.param("      scale_out: 1m", "      scale_out: .inf", "pools.web.cooldown.scale_out", FINITE_DURATION,
                     id="cooldown scale_out: .inf"),
        pytest.param("      scale_in: 5m", "      scale_in: .nan", "pools.web.cooldown.scale_in", FINITE_DURATION,
                     id="cooldown scale_in: .nan"),
        pytest.param("      scale_in: 4m", "      scale_in: .inf", "pools.web.stabilization.scale_in",
                     FINITE_DURATION, id="stabilization scale_in: .inf"),
        pytest.param("      scale_out: 0s", "      scale_out: -.inf", "pools.web.stabilization.scale_out",
                     FINITE_DURATION, id="stabilization scale_out: -.inf"),
        pytest.param("        duration: 10h", "        duration: .inf", "pools.web.schedules.0.duration",
                     FINITE_DURATION, id="schedule duration: .inf (bounds forever)"),
        pytest.param("        duration: 10h", "        duration: 0", "pools.web.schedules.0.duration", POSITIVE,
                     id="schedule duration: 0"),
        # plain numbers: never infinite or NaN (NaN compares false: the rule would never fire)
        pytest.param("        above: 20", "        above: .nan", "pools.web.rules.0.above", FINITE, id="above: .nan"),
        pytest.param("        above: 20", "        above: .inf", "pools.web.rules.0.above", FINITE, id="above: .inf"),
        pytest.param("        above: 20", "        above: 1e999", "pools.web.rules.0.above", FINITE, id="above: 1e999"),
        pytest.param("        below: 5", "        below: -.inf", "pools.web.rules.1.below", FINITE, id="below: -.inf"),
        pytest.param("        at_least: 95", "        at_least: .nan", "pools.web.rules.2.at_least", FINITE,
                     id="at_least: .nan"),
        pytest.param("        at_most: 1", "        at_most: .inf", "pools.web.rules.3.at_most", FINITE,
                     id="at_most: .inf (always fires)"),
        pytest.param("        target: 40", "        target: .inf", "pools.web.rules.4.target", FINITE,
                     id="target: .inf (always shrinks to min)"),
        pytest.param("        target: 40", "        target: .nan", "pools.web.rules.4.target", FINITE,
                     id="target: .nan"),
        pytest.param("        tolerance: 10%", "        tolerance: .nan", "pools.web.rules.4.tolerance", FINITE,
                     id="tolerance: .nan"),
        pytest.param("        tolerance: 10%", "        tolerance: nan%", "pools.web.rules.4.tolerance", FINITE,
                     id="tolerance: nan%"),
        pytest.param("          treat_as: 0", "          treat_as: .nan", TREAT_AS, FINITE,
                     id="on_missing treat_as: .nan"),
        pytest.param("          treat_as: 0", "          treat_as: .inf", TREAT_AS, FINITE,
                     id="on_missing treat_as: .inf"),
        pytest.param("        percentile: 95", "        percentile: .nan", PERCENTILE, FINITE,
                     id="percentile: .nan"),
        pytest.param("        percentile: 95", "        percentile: .inf", PERCENTILE, FINITE,
                     id="percentile: .inf"),
    ],
)
def test_edge_values_are_refused_at_their_line(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    path, line, col = write(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        yamlconf.validate(PolicyFile, path)
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(f"{path}:{line}:{col}: {key}: {message}"), err.value.problems


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("    warmup: 30s", "    warmup: 0", id="warmup: 0 (no warm-up)"),
        pytest.param("        window: 1m", "        window: 0", id="window: 0 (the newest point)"),
        pytest.param("        for: 30s", "        for: 0", id="for: 0 (fires at once)"),
        pytest.param("      scale_out: 1m", "      scale_out: 0", id="cooldown scale_out: 0 (no cooldown)"),
        pytest.param("      scale_in: 4m", "      scale_in: 0", id="stabilization scale_in: 0 (off)"),
        pytest.param("          treat_as: 0", "          treat_as: -1e300", id="treat_as: any finite number"),
        pytest.param("        tolerance: 10%", "        tolerance: 0", id="tolerance: 0 (no band)"),
    ],
)
def test_zeros_that_mean_something_are_kept(tmp_path: Path, old: str, new: str) -> None:
    path, _, _ = write(tmp_path, old, new)
    yamlconf.validate(PolicyFile, path)
