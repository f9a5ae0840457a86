"""The command line itself: `--version` from the one source of the version, the exit codes (the same
table in `scaler --help` and the README), `check --json` and `policy check --json`, and how the API
commands find the API (options, environment, scaler.yaml)."""

from __future__ import annotations

import argparse
import json
import re
import socket
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import scaler
from scaler import cli
from scaler.cli import main
from tests.support.examples import copy_examples

ROOT = Path(__file__).resolve().parents[3]


def test_version_comes_from_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"scaler {declared}\n"
    assert scaler.__version__ == version("scaler") == declared


def exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> dict[int, str]:
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    table = help_text.split("exit codes:\n", 1)[1]
    return {int(m[1]): m[2] for m in re.finditer(r"^  (\d+) +(\S.*)$", table, flags=re.M)}


def test_the_exit_codes_are_the_same_in_help_the_module_and_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    in_help = exit_codes_in_help(capsys)
    constants = {v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert set(in_help) == constants == {0, 1, 2, 3, 4, 130}
    readme = (ROOT / "README.md").read_text()
    section = readme.split("#### Exit codes\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) +\|", section, flags=re.M)
    assert [int(r) for r in rows] == sorted(constants)


def test_check_exits_1_on_problems_like_policy_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy_examples(tmp_path)
    assert main(["check", "-c", str(config)]) == 0
    assert capsys.readouterr().out.endswith(f"{config}: OK\n")
    assert main(["check", "--json", "-c", str(config)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["problems"] == [] and doc["pools"]["web"]["min"] >= 1

    policy = tmp_path / "policies" / "web.yaml"
    policy.write_text(policy.read_text().replace("for: 6s", "for: soon", 1))
    assert main(["check", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("configuration is invalid:\n") and f"{policy}:" in err and "not a duration: 'soon'" in err
    assert main(["check", "--json", "-c", str(config)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["pools"] == {} and "not a duration: 'soon'" in doc["problems"][0]

    assert main(["policy", "check", "-c", str(config), str(policy)]) == 1
    capsys.readouterr()
    assert main(["policy", "check", "--json", "-c", str(config), str(policy)]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0].startswith(f"{policy}:")
    assert main(["policy", "check", "--json", "-c", str(tmp_path / "nope.yaml"), str(policy)]) == 1
    assert "nope.yaml: cannot read" in json.loads(capsys.readouterr().out)["problems"][0]


@pytest.mark.parametrize("argv", [
    pytest.param([], id="no command"),
    pytest.param(["status", "--bogus"], id="unknown option"),
    pytest.param(["why"], id="missing pool"),
    pytest.param(["breaker", "open", "web"], id="not a choice"),
    pytest.param(["status", "--api", "http://a", "--socket", "/s"], id="api and socket"),
])
def test_a_command_line_that_does_not_parse_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: scaler" in capsys.readouterr().err


def target(argv: list[str]) -> cli.ApiTarget:
    parser = argparse.ArgumentParser(parents=[cli._api_options()])
    return cli._api_target(parser.parse_args(argv))


def test_where_the_api_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCALER_API", "SCALER_SOCKET", "SCALER_TOKEN_FILE", "SCALER_CACERT"):
        monkeypatch.delenv(name, raising=False)
    config = copy_examples(tmp_path)
    text = config.read_text()
    assert "  socket: scaler.sock " in text       # the lab example: the socket, relative to scaler.yaml
    assert target(["-c", str(config)]) == cli.ApiTarget(base="http://127.0.0.1:8750")    # not there: TCP
    with socket.socket(socket.AF_UNIX) as served:
        served.bind(str(tmp_path / "scaler.sock"))
        assert target(["-c", str(config)]) == cli.ApiTarget(base="http://localhost",
                                                            socket=str(tmp_path / "scaler.sock"))
    text = re.sub(r"(?m)^  socket: .*\n", "", text)
    config.write_text(text)
    assert target(["-c", str(config)]) == cli.ApiTarget(base="http://127.0.0.1:8750")
    from tests.unit.scaler.test_cli_api import self_signed

    self_signed(tmp_path)
    config.write_text(text.replace("  host: 127.0.0.1\n  port: 8750\n", "  host: 0.0.0.0\n  port: 9000\n  tls: {cert: "
                                   "api.crt, key: api.key}\n", 1))
    assert target(["-c", str(config)]).base == "https://127.0.0.1:9000"

    monkeypatch.setenv("SCALER_API", "https://scaler1:8750/")
    monkeypatch.setenv("SCALER_TOKEN_FILE", "/etc/scaler/token")
    assert target([]) == cli.ApiTarget(base="https://scaler1:8750", token_file="/etc/scaler/token",
                                       token_from="SCALER_TOKEN_FILE")
    monkeypatch.setenv("SCALER_SOCKET", "/run/scaler/api.sock")
    assert target([]).socket == "/run/scaler/api.sock"
    got = target(["--api", "http://other:1", "--token-file", "t", "--cacert", "ca.pem"])
    assert got == cli.ApiTarget(base="http://other:1", token_file="t", cacert="ca.pem")
    assert target(["--socket", "/s"]).socket == "/s"
