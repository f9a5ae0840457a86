"""`--log-format json`: one JSON object per line with ts, level, logger, message, the structured fields
(pool, member, operation) and the traceback as `exc` — checked on records the scaler's own code logs,
through the handler `scaler` installs."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from scaler.audit import Auditor
from scaler.cli import main
from scaler.config import PoolConfig
from scaler.lifecycle import Lifecycle
from scaler.logs import JsonFormatter, setup_logging
from scaler.metrics import Metrics
from scaler.store import Store
from tests.support.clock import ManualClock
from tests.support.examples import copy_examples

ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


@pytest.fixture
def logs() -> Iterator[None]:
    """Leave the root logger as the test found it (main() and setup_logging() install a handler)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [json.loads(line) for line in text.splitlines()]


def test_a_record_with_fields_and_an_exception_is_one_json_line(logs: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json")
    log = logging.getLogger("scaler.lifecycle")
    log.info("%s: %s → %s", "web-a1-0", "booting", "healthy", extra={"pool": "web", "member": "web-a1-0",
                                                                     "operation": "a1"})
    try:
        raise ValueError("the cloud said no\nsecond line")
    except ValueError:
        log.exception("create failed", extra={"pool": "web"})
    logging.getLogger("scaler.access").warning("POST /v1/reload 401", extra={"access": {"status": 401}})
    logging.getLogger("scaler.api").error("port in use", extra={"color_message": "\x1b[31mport in use"})
    logging.getLogger("scaler").debug("not at INFO")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 4
    first, second, access, uv = json_lines(err)
    assert list(first) == ["ts", "level", "logger", "message", "pool", "member", "operation"]
    assert ISO_MS_UTC.match(first["ts"]), first["ts"]
    assert abs(datetime.fromisoformat(first["ts"]).timestamp() - datetime.now().timestamp()) < 60
    assert first | {"ts": None} == {"ts": None, "level": "INFO", "logger": "scaler.lifecycle",
                                    "message": "web-a1-0: booting → healthy", "pool": "web",
                                    "member": "web-a1-0", "operation": "a1"}
    assert second["level"] == "ERROR" and second["pool"] == "web" and "member" not in second
    assert second["exc"].startswith("Traceback (most recent call last):")
    assert second["exc"].endswith("ValueError: the cloud said no\nsecond line")
    assert access["access"] == {"status": 401} and access["level"] == "WARNING"
    assert "color_message" not in uv and uv["logger"] == "scaler.api"      # uvicorn's coloured copy


def test_text_is_one_line_per_record_without_the_fields(logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text", verbose=True)
    logging.getLogger("scaler.engine").debug("web: hold", extra={"pool": "web"})
    line = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG   scaler\.engine: web: hold\n", line), line
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("xml")


def test_setting_up_twice_keeps_one_handler(logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("text")
    setup_logging("json")
    logging.getLogger("scaler").warning("once")
    assert [r["message"] for r in json_lines(capsys.readouterr().err)] == ["once"]


async def test_the_audit_logs_pool_and_member_fields(logs: None, capsys: pytest.CaptureFixture[str], store: Store,
                                                     clock: ManualClock) -> None:
    store.ensure_pool("web", "198.51.100.10", 0)
    orch = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    lc = Lifecycle(store, orch, FakeRouter(), NoDrainer(), {"web": PoolConfig.model_validate(
        {"vip": "198.51.100.10"})}, Metrics(), clock)
    store.start_scale_out("web", 1, 0, "below min", clock())
    for _ in range(5):
        await lc.reconcile()
        clock.advance(1)
    [m] = store.members("web")
    del orch.instances[m.instance]
    setup_logging("json")
    capsys.readouterr()
    await Auditor(lc).audit()
    [record] = [r for r in json_lines(capsys.readouterr().err) if r["logger"] == "scaler.audit"]
    assert (record["level"], record["pool"], record["member"]) == ("WARNING", "web", m.instance)
    assert record["message"].startswith(f"audit: {m.instance}")


def test_run_with_json_logs_reports_an_invalid_config_as_one_json_record(
        logs: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = copy_examples(tmp_path)
    text = config.read_text()
    config.write_text(text.replace("  port: 8750", "  port: 8750\n  colour: blue", 1))
    assert "colour: blue" in config.read_text()
    line = config.read_text().splitlines().index("  colour: blue") + 1
    for argv in (["--log-format", "json", "run", "-c", str(config)],
                 ["run", "--log-format", "json", "-c", str(config)]):
        assert main(argv) == 1
        [record] = json_lines(capsys.readouterr().err)
        assert (record["level"], record["logger"], record["message"]) == ("ERROR", "scaler", "configuration is invalid")
        assert record["problems"] == [f"{config}:{line}:3: api.colour: unknown key"]
    monkeypatch.setenv("SCALER_LOG_FORMAT", "json")
    assert main(["run", "-c", str(config)]) == 1
    assert json_lines(capsys.readouterr().err)[0]["problems"]
    assert main(["--log-format", "text", "run", "-c", str(config)]) == 1
    assert capsys.readouterr().err.startswith("configuration is invalid:\n  ")
    monkeypatch.setenv("SCALER_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exc:
        main(["run", "-c", str(config)])
    assert exc.value.code == 2
    assert "SCALER_LOG_FORMAT=xml: one of text, json" in capsys.readouterr().err


def test_the_formatter_keeps_a_message_that_is_not_a_string() -> None:
    record = logging.LogRecord("scaler", logging.INFO, __file__, 1, {"a": 1}, None, None)
    assert json.loads(JsonFormatter().format(record))["message"] == "{'a': 1}"


def test_run_with_json_logs_ends_a_start_up_failure_with_one_json_record_and_exit_4(
        logs: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text(
        "pools:\n  web:\n    min: 1\n    max: 2\n    inputs: {s: {source: haproxy, metric: current_sessions}}\n"
        "    rules: [{name: busy, input: s, above: 12, adjust: 1}]\n")
    config = tmp_path / "scaler.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(f"store: {{url: 'sqlite:///{tmp_path}/s.db'}}\napi: {{host: 127.0.0.1, port: {port}}}\n"
                          "policy_dir: policies\norchestrator: {driver: fake}\nrouter: {driver: fake}\n"
                          "collectors: {haproxy: {driver: haproxy, target: {url: 'http://{address}:8404/metrics'}}}\n"
                          "pools:\n  web: {vip: 198.19.0.1}\n")
        assert main(["--log-format", "json", "run", "-c", str(config)]) == 4
    records = json_lines(capsys.readouterr().err)
    failed = [r for r in records if r["level"] == "ERROR"]
    assert len(failed) == 1 and failed[0]["logger"] == "scaler"
    assert failed[0]["message"].startswith(f"api: cannot listen on 127.0.0.1:{port}: the address is already in use")
