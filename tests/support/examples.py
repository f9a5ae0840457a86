"""The shipped examples (deploy/examples) as a test sees them: copied to a directory of its own, with
the lab's SNMP secret files (which `scaler lab up` makes under /run/scaler-lab) replaced by files in
that directory, so the examples validate without a lab and without touching /run."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
LAB_SECRETS = "/run/scaler-lab/scl/snmp/"


def example_config_text(secrets_dir: Path, name: str = "scaler.yaml") -> str:
    """deploy/examples/NAME with its secret files under `secrets_dir` (made here)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for secret in ("auth_key", "priv_key", "community"):
        (secrets_dir / secret).write_text(f"test-{secret}-0123456789\n")
    return (EXAMPLES / name).read_text().replace(LAB_SECRETS, f"{secrets_dir}/")


def copy_examples(dst: Path) -> Path:
    """Copy deploy/examples to `dst`; returns the path of its scaler.yaml. Line numbers are unchanged."""
    shutil.copytree(EXAMPLES, dst, dirs_exist_ok=True)
    config = dst / "scaler.yaml"
    config.write_text(example_config_text(dst / "snmp"))
    (dst / "scaler-bgp.yaml").write_text(example_config_text(dst / "snmp", "scaler-bgp.yaml"))
    return config
