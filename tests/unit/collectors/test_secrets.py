from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from collectors.secrets import Secret


class Conf(BaseModel):
    token: Secret


def test_secret_from_file_is_its_first_line(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret\nignored\n")
    conf = Conf.model_validate({"token": {"file": str(f)}})
    assert conf.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(conf) and "s3cret" not in str(conf.token)


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALER_TEST_TOKEN", "abc")
    assert Conf.model_validate({"token": {"env": "SCALER_TEST_TOKEN"}}).token.get_secret_value() == "abc"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("inline", "not inline"),
        ({"env": "SCALER_TEST_UNSET_VARIABLE"}, "SCALER_TEST_UNSET_VARIABLE is not set"),
        ({"file": "/nonexistent/scaler-token"}, "cannot read secret file /nonexistent/scaler-token"),
        ({"file": "/x", "env": "Y"}, "exactly one of 'file' or 'env'"),
        ({}, "exactly one of 'file' or 'env'"),
    ],
    ids=["inline-string", "unset-env", "missing-file", "both", "neither"],
)
def test_bad_secret_names_the_problem_not_the_value(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Conf.model_validate({"token": value})


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        Conf.model_validate({"token": {"file": str(f)}})


def test_a_relative_secret_file_is_relative_to_the_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("rel\n")
    monkeypatch.chdir("/")
    conf = Conf.model_validate({"token": {"file": "secrets/token"}}, context={"base_dir": tmp_path})
    assert conf.token.get_secret_value() == "rel"
    with pytest.raises(ValidationError, match="cannot read secret file secrets/token"):
        Conf.model_validate({"token": {"file": "secrets/token"}})
