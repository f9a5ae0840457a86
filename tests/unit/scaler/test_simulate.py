"""`scaler simulate`: recorded series replayed through the real evaluation code with a simulated clock.

The decisions are checked against timelines computed by hand from the policy's `for`, cooldowns and
the boot / drain delays; the shipped sample must produce a timeline and a PNG; every bad input names
its file, line and column and exits 1 (scaler.cli EXIT_CODES)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies import PoolPolicy
from scaler.config import check_policy_paths
from scaler.errors import ConfigError
from scaler.simulate import Options, Recording, fetch_prometheus, main, parse_time, read_csv, simulate

ROOT = Path(__file__).resolve().parents[3]
WEB_POLICY = ROOT / "deploy" / "examples" / "policies" / "web.yaml"
WEB_CSV = ROOT / "deploy" / "examples" / "metrics" / "web.csv"

# Hand-computed below: `up` needs load > 10 for 20 s, `down` load < 5 for 30 s; cooldowns 30 s out,
# 60 s in, counted from the completion of the last action.
STEPS = """\
pools:
  t:
    min: 1
    max: 4
    inputs:
      load: {source: x, metric: m, aggregate: sum}
    rules:
      - {name: up, input: load, above: 10, for: 20s, adjust: +1}
      - {name: down, input: load, below: 5, for: 30s, adjust: -1}
    cooldown: {scale_out: 30s, scale_in: 60s}
    stale_after: 15s
"""

T0 = 1_700_000_000


def steps_csv(blank: tuple[int, ...] = ()) -> str:
    """load 2 at t=0, 20 from t=10 to t=190, 2 from t=200 to t=450, every 10 s (t after T0)."""
    rows = ["timestamp,load"]
    for t in range(0, 460, 10):
        value = "" if t in blank else ("20" if 10 <= t <= 190 else "2")
        rows.append(f"{T0 + t},{value}")
    return "\n".join(rows) + "\n"


def pool_of(tmp_path: Path, text: str, name: str = "policy.yaml") -> tuple[Path, PoolPolicy]:
    path = tmp_path / name
    path.write_text(text)
    policies, problems = check_policy_paths([path], None)
    assert not problems, problems
    return path, next(iter(policies.values()))


def happenings(policy: PoolPolicy, recording: Recording, **options: Any) -> list[tuple[float, str, int, int]]:
    result = simulate(policy, recording, Options(**options))
    return [(h.t - T0, h.kind, h.before if h.before is not None else -1, h.size) for h in result.happenings]


@pytest.mark.parametrize(
    ("blank", "boot", "expected"),
    [
        pytest.param((), 40.0, [
            # up holds from 10, fires at 30; boots 30 → 70; scale-out cooldown 70 + 30 = 100; and so on.
            (30, "scale_out", 1, 2), (70, "ready", 1, 2),
            (100, "scale_out", 2, 3), (140, "ready", 2, 3),
            (170, "scale_out", 3, 4), (210, "ready", 3, 4),
            # down holds from 200, fires at 230, waits for the cooldown from 210: 270; drains 10 s.
            (270, "scale_in", 4, 3), (280, "drained", 4, 3),
            (340, "scale_in", 3, 2), (350, "drained", 3, 2),
            (410, "scale_in", 2, 1), (420, "drained", 2, 1),
        ], id="for, cooldowns from completion, boot 40s, drain 10s"),
        pytest.param((), 0.0, [
            # Instant boots: the cooldown starts at the decision itself.
            (30, "scale_out", 1, 2), (30, "ready", 1, 2),
            (60, "scale_out", 2, 3), (60, "ready", 2, 3),
            (90, "scale_out", 3, 4), (90, "ready", 3, 4),
            # down fires at 230, long after the last action's cooldown.
            (230, "scale_in", 4, 3), (240, "drained", 4, 3),
            (300, "scale_in", 3, 2), (310, "drained", 3, 2),
            (370, "scale_in", 2, 1), (380, "drained", 2, 1),
        ], id="instant boot: cooldown counts from the decision"),
        pytest.param((320, 330), 40.0, [
            (30, "scale_out", 1, 2), (70, "ready", 1, 2),
            (100, "scale_out", 2, 3), (140, "ready", 2, 3),
            (170, "scale_out", 3, 4), (210, "ready", 3, 4),
            (270, "scale_in", 4, 3), (280, "drained", 4, 3),
            # No data at 320 and 330: down's run starts again at 340 and holds 30 s at 370.
            (370, "scale_in", 3, 2), (380, "drained", 3, 2),
            (440, "scale_in", 2, 1), (450, "drained", 2, 1),
        ], id="a gap of missing data restarts the for"),
    ],
)
def test_decisions_match_the_hand_computed_timeline(tmp_path: Path, blank: tuple[int, ...], boot: float,
                                                    expected: list[tuple[float, str, int, int]]) -> None:
    _, policy = pool_of(tmp_path, STEPS)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv(blank))
    assert happenings(policy, read_csv(csv, policy), boot_delay=boot, drain_delay=10.0) == expected


def test_holds_print_once_per_cause_with_elapsed_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy_path, _ = pool_of(tmp_path, STEPS)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv((320, 330)))
    assert main(["--policy", str(policy_path), "--metrics", str(csv), "--boot-delay", "40s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    timeline = [ln for ln in lines if ln[:2] == "00"]
    assert timeline[:7] == [
        # Same cause at 00:00:10 (up pending): not printed again.
        "00:00:00  hold       1      [pending] waiting: down: load < 5 (2) for 0s of 30s",
        "00:00:30  scale_out  1 → 2  up: load > 10 (20) for 20s: +1",
        "00:00:40  hold       2      [busy] busy: scale-out 1 → 2 in progress",
        "00:01:10  ready      2      +1 in service after 40s boot",
        "00:01:10  hold       2      [cooldown] cooldown: scale-out allowed in 30s (up asks +1 → 3)",
        "00:01:40  scale_out  2 → 3  up: load > 10 (20) for 20s: +1",
        "00:01:50  hold       3      [busy] busy: scale-out 2 → 3 in progress",
    ]
    assert "00:05:20  hold       3      [missing_data] missing data for input load: no value in load.csv line 34" \
        in timeline
    summary = "\n".join(lines[lines.index("summary"):])
    assert "actions         3 scale-out (+3), 3 scale-in (-3) — up: 3, down: 3" in summary
    assert "size            start 1, end 1, min 1, max 4" in summary


TARGET = """\
pools:
  t:
    min: 1
    max: 10
    inputs:
      sessions: {source: x, metric: m, aggregate: avg}
    rules:
      - {name: track, input: sessions, target: 10}
    cooldown: {scale_out: 0s, scale_in: 0s}
"""


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        pytest.param(None, [(0, "scale_out", 2, 6), (20, "ready", 2, 6)],
                     id="rescaled by default with a size column: 30 on 2 members is 10 on 6"),
        pytest.param(False, [(0, "scale_out", 2, 6), (20, "ready", 2, 6), (20, "scale_out", 6, 10),
                             (40, "ready", 6, 10)],
                     id="replayed as recorded: 30 per member whatever the size, up to max"),
    ],
)
def test_scale_with_size(tmp_path: Path, scale: bool | None, expected: list[tuple[float, str, int, int]]) -> None:
    _, policy = pool_of(tmp_path, TARGET)
    csv = tmp_path / "s.csv"
    csv.write_text("timestamp,sessions,size\n" + "".join(f"{T0 + t},30,2\n" for t in range(0, 110, 10)))
    rec = read_csv(csv, policy)
    assert happenings(policy, rec, boot_delay=20.0, scale_with_size=scale) == expected
    result = simulate(policy, rec, Options(boot_delay=20.0, scale_with_size=scale))
    assert result.evaluations[-1].decision.inputs["sessions"] == (10.0 if scale is None else 30.0)


def test_the_long_format_gives_the_same_decisions(tmp_path: Path) -> None:
    _, policy = pool_of(tmp_path, STEPS)
    wide, long = tmp_path / "wide.csv", tmp_path / "long.csv"
    wide.write_text(steps_csv((320,)))
    rows = [line.split(",") for line in steps_csv((320,)).splitlines()[1:]]
    # Rows in any order, with another pool's input mixed in.
    long.write_text("timestamp,input,value\n" + "".join(f"{t},other,1\n{t},load,{v}\n" for t, v in reversed(rows)))
    assert happenings(policy, read_csv(long, policy)) == happenings(policy, read_csv(wide, policy))


def test_alarm_columns_hold_their_state_between_notifications(tmp_path: Path) -> None:
    _, policy = pool_of(tmp_path, """\
pools:
  t:
    min: 1
    max: 5
    inputs:
      load: {source: x, metric: m}
    rules:
      - {name: idle, input: load, below: 5, adjust: -1}
      - {name: page, alarm: Page, adjust: +2}
    cooldown: {scale_out: 0s, scale_in: 0s}
""")
    csv = tmp_path / "a.csv"
    # Page fires at 20 and is resolved at 60; the empty cells in between keep it firing.
    values = {0: "0", 20: "1", 60: "0"}
    csv.write_text("timestamp,load,Page\n" + "".join(f"{T0 + t},1,{values.get(t, '')}\n" for t in range(0, 100, 10)))
    got = happenings(policy, read_csv(csv, policy), boot_delay=25.0, drain_delay=0.0, start_size=2)
    # idle scales in at once (2 → 1); page fires at 20 (1 → 3), booting until 45; at 50 page still fires
    # (+2 → 5), booting until 75; at 80 the alarm is resolved and idle shrinks again.
    assert got == [(0, "scale_in", 2, 1), (0, "drained", 2, 1), (20, "scale_out", 1, 3), (45, "ready", 1, 3),
                   (50, "scale_out", 3, 5), (75, "ready", 3, 5), (80, "scale_in", 5, 4), (80, "drained", 5, 4),
                   (90, "scale_in", 4, 3)]


def test_shipped_sample_gives_a_timeline_a_summary_and_a_png(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "web.png"
    assert main(["--policy", str(WEB_POLICY), "--metrics", str(WEB_CSV), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "scale_out  1 → 2  busy: sessions > 12" in out
    assert "scale_in   3 → 2  idle: sessions < 4" in out
    assert "[missing_data] missing data for input sessions" in out     # the gap in the sample
    assert "\nsummary\n" in out and "holds by cause  " in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])                # IHDR
    assert width >= 800 and height >= 600 and len(data) > 30_000


def test_json_output_is_machine_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy_path, _ = pool_of(tmp_path, STEPS)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv())
    assert main(["--policy", str(policy_path), "--metrics", str(csv), "--boot-delay", "40s", "--json",
                 "--verbose", "--to", "+60s"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(e["at"], e["kind"]) for e in doc["timeline"] if e["kind"] != "hold"] == [("00:00:30", "scale_out")]
    assert len(doc["evaluations"]) == 7 and doc["evaluations"][3]["outcome"] == "scale_out"
    assert doc["summary"]["actions"]["scale_out"] == 1 and doc["summary"]["pending"].startswith("scale-out 1 → 2")
    assert doc["summary"]["holds"]["busy"] == {"count": 3, "seconds": 30.0}


def test_from_to_and_step(tmp_path: Path) -> None:
    _, policy = pool_of(tmp_path, STEPS)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv())
    rec = read_csv(csv, policy)
    # Starting at 25 s, with history before it: up has held since 10 and fires at the first evaluation.
    result = simulate(policy, rec, Options(start=T0 + 25, end=T0 + 45, step=5.0, boot_delay=40.0))
    assert [e.t - T0 for e in result.evaluations] == [25, 30, 35, 40, 45]
    assert [(h.t - T0, h.kind) for h in result.happenings] == [(30, "scale_out")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1715677200", 1715677200.0, id="epoch seconds"),
        pytest.param("2024-05-14T09:00:00Z", 1715677200.0, id="ISO 8601 with Z"),
        pytest.param("2024-05-14T11:00:00+02:00", 1715677200.0, id="ISO 8601 with an offset"),
        pytest.param("2024-05-14 09:00:00", 1715677200.0, id="ISO 8601 without a zone is UTC"),
        pytest.param("now-1h", 1_000_000 - 3600.0, id="relative to now"),
        pytest.param("+5m", 500.0 + 300, id="relative to the start"),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, now=1_000_000, base=500.0) == expected


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        pytest.param("timestamp,load\n100,1\n110,abc\n", ["{path}:3:5: load: not a number: 'abc'"],
                     id="a value that is not a number"),
        pytest.param("timestamp,lod\n100,1\n", ["{path}:1:1: no column for input 'load' of pool t (columns: "
                                                 "timestamp, lod; pool t reads load)"],
                     id="a missing column"),
        pytest.param("# comment\ntimestamp,load\n100,1\nyesterday,2\n",
                     ["{path}:4:1: timestamp: not a time: 'yesterday' (use epoch seconds or ISO 8601 such as "
                      "2024-05-14T09:00:00Z)"], id="a bad timestamp after a comment"),
        pytest.param("timestamp,load\n100,1\n90,2\n",
                     ["{path}:3:1: timestamp 90 is not after the one on line 2"], id="time going backwards"),
        pytest.param("timestamp,load\n100,1,3\n", ["{path}:2:1: 3 fields, the header has 2"],
                     id="a line with too many fields"),
        pytest.param("timestamp,load,size\n100,1,-2\n110,x,2\n",
                     ["{path}:2:7: size: not a size: '-2'", "{path}:3:5: load: not a number: 'x'"],
                     id="every problem is reported"),
        pytest.param("load,timestamp\n1,100\n", ["{path}:1:1: the first column must be 'timestamp' (epoch "
                                                  "seconds or ISO 8601), got 'load'"], id="no timestamp column"),
        pytest.param("timestamp,input,value\n100,load,1\n100,load,2\n",
                     ["{path}:3:1: load: a second value at 100 (first on line 2)"], id="long format duplicate"),
    ],
)
def test_bad_csv_names_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str], csv: str,
                                            expected: list[str]) -> None:
    policy_path, _ = pool_of(tmp_path, STEPS)
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    assert main(["--policy", str(policy_path), "--metrics", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [e.format(path=path) for e in expected]


def test_broken_policy_gives_the_same_messages_as_policy_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from scaler.cli import main as scaler_main

    bad = tmp_path / "bad.yaml"
    bad.write_text(STEPS.replace("above: 10", "abov: 10").replace("max: 4", "max: four"))
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv())
    monkeypatch.chdir(tmp_path)        # no ./scaler.yaml: policy check validates the file alone
    assert scaler_main(["policy", "check", str(bad)]) == 1
    checked = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(str(bad))]
    assert main(["--policy", str(bad), "--metrics", str(csv)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == checked and len(err) == 2
    assert err[0].startswith(f"{bad}:4:5: pools.t.max: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--scale-with-size"], "--scale-with-size needs the recorded size (a 'size' column)",
                     id="scale with size without a size column"),
        pytest.param(["--from", "+100s", "--to", str(T0 + 50)], "is before the start", id="end before start"),
        pytest.param(["--from", "soon"], "--from: not a time: 'soon'", id="bad --from"),
        pytest.param(["--query", "load=up"], "--query goes with --prometheus", id="query without prometheus"),
    ],
)
def test_bad_options_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                            message: str) -> None:
    policy_path, _ = pool_of(tmp_path, STEPS)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv())
    assert main(["--policy", str(policy_path), "--metrics", str(csv), *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_file_with_several_pools_needs_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = STEPS + STEPS.replace("pools:\n", "").replace("  t:", "  u:")
    policy_path, _ = pool_of(tmp_path, STEPS)
    policy_path.write_text(two)
    csv = tmp_path / "load.csv"
    csv.write_text(steps_csv())
    assert main(["--policy", str(policy_path), "--metrics", str(csv)]) == 1
    assert "the file has pools t, u: choose one with --pool" in capsys.readouterr().err
    assert main(["--policy", str(policy_path), "--metrics", str(csv), "--pool", "u"]) == 0
    assert "simulating pool u" in capsys.readouterr().out


# --- Prometheus, with a fake server ------------------------------------------------------------------


def fake_prometheus(answer: Callable[[str, float, float, float], list[dict[str, Any]]],
                    seen: list[dict[str, str]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query_range"
        form = dict(httpx.QueryParams(request.content.decode()))
        seen.append(form)
        if form["query"] == "bad(":
            return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error"})
        result = answer(form["query"], float(form["start"]), float(form["end"]), float(form["step"]))
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})

    return httpx.MockTransport(handler)


def test_prometheus_range_queries_build_the_series(tmp_path: Path) -> None:
    _, policy = pool_of(tmp_path, STEPS)
    seen: list[dict[str, str]] = []

    def answer(query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        # A sample every step, except at T0 + 20 (no data) and NaN at T0 + 30.
        values = []
        t = start
        while t <= end + 1e-6:
            if round(t - T0) != 20:
                values.append([t, "NaN" if round(t - T0) == 30 else "20"])
            t += step
        return [{"metric": {}, "values": values}]

    rec = fetch_prometheus("http://prom:9090/", {"load": "sum(x)"}, policy, T0, T0 + 50, 10.0,
                           transport=fake_prometheus(answer, seen))
    assert [(p.t - T0, p.value) for p in rec.points] == [(0, 20.0), (10, 20.0), (20, None), (30, None),
                                                          (40, 20.0), (50, 20.0)]
    assert rec.spacing == 10.0 and seen[0]["query"] == "sum(x)" and seen[0]["step"] == "10"


def test_prometheus_long_ranges_are_split_on_the_same_grid(tmp_path: Path) -> None:
    _, policy = pool_of(tmp_path, STEPS)
    seen: list[dict[str, str]] = []

    def answer(query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        n = round((end - start) / step) + 1
        return [{"metric": {}, "values": [[start + k * step, "1"] for k in range(n)]}]

    rec = fetch_prometheus("http://prom:9090", {"load": "x"}, policy, T0, T0 + 12_000, 1.0,
                           transport=fake_prometheus(answer, seen))
    assert len(seen) == 2 and float(seen[1]["start"]) == float(seen[0]["end"]) + 1
    assert len(rec.points) == 12_001 and all(p.value == 1.0 for p in rec.points)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        pytest.param({"load": "up"}, "--query load=up: returned 2 series, one is needed: aggregate it, e.g. "
                                     'avg(up) (series: {instance="a", job="j"}; {instance="b", job="j"})',
                     id="several series"),
        pytest.param({"load": "bad("}, "--query load=bad(: Prometheus said bad_data: parse error", id="bad PromQL"),
        pytest.param({}, "--query: no query for input 'load' of pool t (write --query load=PROMQL)",
                     id="an input without a query"),
        pytest.param({"load": "x", "cpu": "y"}, "--query cpu=…: pool t has no input 'cpu' (inputs: load)",
                     id="a query for an unknown input"),
    ],
)
def test_prometheus_query_problems_name_the_query(tmp_path: Path, queries: dict[str, str], message: str) -> None:
    _, policy = pool_of(tmp_path, STEPS)

    def answer(query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return [{"metric": {"job": "j", "instance": i}, "values": [[start, "1"]]} for i in ("a", "b")]

    with pytest.raises(ConfigError) as err:
        fetch_prometheus("http://prom:9090", queries, policy, T0, T0 + 50, 10.0,
                         transport=fake_prometheus(answer, []))
    assert err.value.problems == [message]
