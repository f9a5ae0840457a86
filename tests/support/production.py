"""deploy/examples/production as /etc/scaler would hold it, under a test's directory, with every file
it names (secrets, clouds.yaml) made up."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "production"
SECRETS = ("snmp-auth", "snmp-priv", "alertmanager-token")


def install(dst: Path) -> Path:
    """The example as /etc/scaler would hold it, under `dst`, with the files it names."""
    shutil.copytree(EXAMPLE, dst, dirs_exist_ok=True)
    config = dst / "scaler.yaml"
    config.write_text(config.read_text().replace("/etc/scaler/", f"{dst}/"))
    (dst / "secrets").mkdir()
    for name in SECRETS:
        (dst / "secrets" / name).write_text(f"{name}-0123456789\n")
    (dst / "clouds.yaml").write_text("clouds:\n  lb-prod:\n    auth_type: v3applicationcredential\n")
    return config
