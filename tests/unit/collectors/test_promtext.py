"""The name-filtered exposition parser: format details, filtering, errors, and agreement with
prometheus_client on a real HAProxy 2.6 answer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from collectors.promtext import PromSample, PromTextError, parse

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "haproxy"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("up 1", PromSample("up", {}, 1.0), id="no labels"),
        pytest.param("up{} 1", PromSample("up", {}, 1.0), id="empty label set"),
        pytest.param(
            'x{proxy="web",server="s1"} 42',
            PromSample("x", {"proxy": "web", "server": "s1"}, 42.0),
            id="two labels",
        ),
        pytest.param('x{a="b",} 1', PromSample("x", {"a": "b"}, 1.0), id="trailing comma"),
        pytest.param('x{ a = "b" , c="d" } 1', PromSample("x", {"a": "b", "c": "d"}, 1.0), id="spaces"),
        pytest.param(
            r'x{a="q\"uote",b="back\\slash",c="new\nline"} 1',
            PromSample("x", {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}, 1.0),
            id="escapes",
        ),
        pytest.param(
            r'x{a="ends with \\"} 1',
            PromSample("x", {"a": "ends with \\"}, 1.0),
            id="escaped backslash before quote",
        ),
        pytest.param(
            'x{a="has , and } and = and {"} 1',
            PromSample("x", {"a": "has , and } and = and {"}, 1.0),
            id="separators inside a value",
        ),
        pytest.param(r'x{a="\t"} 1', PromSample("x", {"a": r"\t"}, 1.0), id="unknown escape kept verbatim"),
        pytest.param("x +Inf", PromSample("x", {}, math.inf), id="+Inf"),
        pytest.param("x -Inf", PromSample("x", {}, -math.inf), id="-Inf"),
        pytest.param("x 1.5e+06", PromSample("x", {}, 1.5e6), id="exponent"),
        pytest.param("x -0.25", PromSample("x", {}, -0.25), id="negative"),
        pytest.param("x 7 1700000000123", PromSample("x", {}, 7.0, 1700000000123), id="timestamp"),
        pytest.param('x{a="b"} 7 -5', PromSample("x", {"a": "b"}, 7.0, -5), id="labels and negative timestamp"),
        pytest.param("x\t3", PromSample("x", {}, 3.0), id="tab separator"),
        pytest.param("x 3\r", PromSample("x", {}, 3.0), id="CRLF line end"),
        pytest.param("ns:x_total 3", PromSample("ns:x_total", {}, 3.0), id="colon in name"),
    ],
)
def test_parses_one_line(line: str, expected: PromSample) -> None:
    assert parse(line) == [expected]
    assert parse(line, [expected.name]) == [expected]


def test_nan_value() -> None:
    [sample] = parse("x NaN")
    assert math.isnan(sample.value)


def test_comments_and_blank_lines_are_skipped() -> None:
    text = "# HELP x Help with {braces} and \\ escapes\n# TYPE x counter\n\n   \n# random comment\nx 1\n"
    assert parse(text) == [PromSample("x", {}, 1.0)]


def test_only_wanted_names_are_returned() -> None:
    text = 'a 1\nab 2\na_total 3\nb{x="y"} 4\na{k="v"} 5\n'
    assert parse(text, ["a"]) == [PromSample("a", {}, 1.0), PromSample("a", {"k": "v"}, 5.0)]
    assert parse(text, {"a_total", "b"}) == [PromSample("a_total", {}, 3.0), PromSample("b", {"x": "y"}, 4.0)]
    assert parse(text, []) == []


def test_unwanted_malformed_lines_are_not_even_looked_at() -> None:
    # Skipping by prefix is the point; a broken line of an unwanted metric costs nothing and is ignored.
    text = 'junk{unterminated="1\nwanted 2\n'
    assert parse(text, ["wanted"]) == [PromSample("wanted", {}, 2.0)]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("x", id="no value"),
        pytest.param("x abc", id="non-numeric value"),
        pytest.param("x 1_000", id="underscore digits"),
        pytest.param("x 1 2 3", id="too many fields"),
        pytest.param("x 1 1.5", id="non-integer timestamp"),
        pytest.param('x{a="b" 1', id="unterminated label set"),
        pytest.param('x{a="b} 1', id="unterminated label value"),
        pytest.param("x{a=b} 1", id="unquoted label value"),
        pytest.param('x{a="b" c="d"} 1', id="missing comma"),
        pytest.param('x{1a="b"} 1', id="bad label name"),
        pytest.param('x{="b"} 1', id="empty label name"),
        pytest.param("x{a} 1", id="label without value"),
        pytest.param("x# 1", id="garbage after name"),
        pytest.param('{a="b"} 1', id="no metric name"),
    ],
)
def test_malformed_wanted_line_raises_with_line_number(line: str) -> None:
    text = f"# HELP x something\nok 1\n{line}\n"
    with pytest.raises(PromTextError) as info:
        parse(text)
    assert info.value.lineno == 3
    if line.startswith("x"):
        with pytest.raises(PromTextError):
            parse(text, ["x"])


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40))
def test_label_values_round_trip(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    assert parse(f'm{{l="{escaped}"}} 1', ["m"]) == [PromSample("m", {"l": value}, 1.0)]


def _canonical(name: str, labels: dict[str, str], value: float) -> tuple[str, tuple[tuple[str, str], ...], str]:
    # prometheus_client appends `_total` to counter samples declared without it (HAProxy 2.6 has
    # `haproxy_process_failed_resolutions`); we return names as written, so compare without it.
    return name.removesuffix("_total"), tuple(sorted(labels.items())), repr(float(value))


@pytest.mark.parametrize("fixture", ["full_metrics.txt", "scrape_queue_2.txt"])
def test_agrees_with_prometheus_client_on_real_haproxy_output(fixture: str) -> None:
    text = (FIXTURES / fixture).read_text()
    reference = sorted(
        _canonical(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
    )
    ours = sorted(_canonical(s.name, s.labels, s.value) for s in parse(text))
    assert len(ours) > 300
    assert ours == reference


def test_filtered_real_output_returns_exactly_the_wanted_series() -> None:
    text = (FIXTURES / "full_metrics.txt").read_text()
    wanted = {"haproxy_frontend_current_sessions", "haproxy_process_start_time_seconds"}
    got = parse(text, wanted)
    assert {s.name for s in got} == wanted
    assert [s for s in parse(text) if s.name in wanted] == got
