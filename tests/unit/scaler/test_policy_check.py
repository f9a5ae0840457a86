"""`scaler policy check PATH…`: exit 0 when every file is valid, otherwise 1 and every problem of
every file as FILE:LINE:COL: message — the same validation the service runs on start and reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.cli import main
from tests.support.examples import copy_examples

GOOD = """\
pools:
  web:
    min: 1
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
    rules:
      - name: busy
        input: sessions
        above: 12
        for: 6s
        adjust: +1
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return copy_examples(tmp_path / "etc")


def write(tmp_path: Path, name: str, old: str, new: str) -> Path:
    assert old in GOOD
    path = tmp_path / name
    path.write_text(GOOD.replace(old, new, 1))
    return path


def test_valid_files_exit_0_and_are_summarised(tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "", "")
    assert main(["policy", "check", "-c", str(conf), str(good)]) == 0
    out = capsys.readouterr().out
    assert "web: min 1, max 3, 1 inputs, 1 rules" in out and out.rstrip().endswith("OK")


def test_the_shipped_policy_directory_is_valid(conf: Path) -> None:
    assert main(["policy", "check", "-c", str(conf), str(conf.parent / "policies")]) == 0


def test_every_problem_of_every_file_with_file_line_and_text(tmp_path: Path, conf: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    files = {
        "typo": write(tmp_path, "typo.yaml", "        for: 6s", "        for: 6s\n        adjsut: +2"),
        "type": write(tmp_path, "type.yaml", "    min: 1", "    min: one"),
        "bounds": write(tmp_path, "bounds.yaml", "    max: 3", "    max: 0"),
        "order": write(tmp_path, "order.yaml", "    min: 1", "    min: 5"),
        "duration": write(tmp_path, "duration.yaml", "for: 6s", "for: soon"),
        "collector": write(tmp_path, "collector.yaml", "source: haproxy", "source: snmpx"),
        "input": write(tmp_path, "input.yaml", "        input: sessions", "        input: session"),
        "syntax": write(tmp_path, "syntax.yaml", "    max: 3", "    max: [3"),
        "cron": write(tmp_path, "cron.yaml", "        adjust: +1\n", "        adjust: +1\n    schedules:\n"
                      "      - {name: morning, cron: '0 25 * * *', duration: 1h, min: 2, timezone: Mars/Olympus}\n"),
    }
    code = main(["policy", "check", "-c", str(conf), *map(str, files.values())])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    expected = [
        f"{files['typo']}:12:9: pools.web.rules.0.adjsut: unknown key",
        f"{files['type']}:3:5: pools.web.min: Input should be a valid integer",
        f"{files['bounds']}:4:5: pools.web.max: Input should be greater than or equal to 1",
        f"{files['order']}:2:3: pools.web: min (5) is greater than max (3)",
        f"{files['duration']}:11:9: pools.web.rules.0.for: not a duration: 'soon'",
        f"{files['collector']}:6:18: pools.web.inputs.sessions.source: unknown collector 'snmpx'",
        f"{files['input']}:2:3: pools.web: rule 'busy' uses unknown input 'session' (inputs: sessions)",
        f"{files['syntax']}:",
        f"{files['cron']}:14:25: pools.web.schedules.0.cron: not a cron expression: '0 25 * * *'",
        f"{files['cron']}:14:67: pools.web.schedules.0.timezone: unknown timezone 'Mars/Olympus'",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in out), f"{want!r} not in:\n" + "\n".join(out)
    assert any(line.startswith(f"{files['syntax']}:") and "YAML syntax" in line for line in out)


def test_without_a_service_config_only_the_files_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)        # no ./scaler.yaml here
    unknown_collector = write(tmp_path, "c.yaml", "source: haproxy", "source: anything")
    assert main(["policy", "check", str(unknown_collector)]) == 0
    assert "pools and collectors are not checked" in capsys.readouterr().err


def test_an_explicit_missing_service_config_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "", "")
    assert main(["policy", "check", "-c", str(tmp_path / "nope.yaml"), str(good)]) == 1
    assert "nope.yaml: cannot read" in capsys.readouterr().err
