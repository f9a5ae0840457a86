"""Shared by the API access tests: a ServiceView over a real store that records what it was asked
to change, API credentials with their tokens in files, and a self-signed certificate made by the
test itself (cryptography)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from policies import PoolPolicy
from scaler.alerts import AlertsConfig
from scaler.config import ApiConfig, PoolConfig
from scaler.metrics import Metrics
from scaler.service import ReloadResult
from scaler.store import Store

OPS_TOKEN = "ops-token-0123456789abcdef"          # scopes read, operate
READ_TOKEN = "read-token-0123456789abcdef"        # scope read
WRONG_TOKEN = "wrong-token-0123456789abcdef"      # configured nowhere
NOW = 1_795_279_800.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class View:
    """What the API needs from the service, on a real store; reloads are recorded, not performed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.metrics = Metrics()
        self.pools = {"web": PoolConfig.model_validate({"vip": "198.19.0.1"})}
        self.policies: dict[str, PoolPolicy] = {}
        self.alerts = AlertsConfig()
        self.last_reload: ReloadResult | None = None
        self.reloads: list[str] = []

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    def router_health(self) -> dict[str, Any]:
        return {"driver": "fake"}

    def member_check(self, member_id: str) -> dict[str, Any] | None:
        return None

    def health_panic(self, pool: str) -> str | None:
        return None

    def cluster(self) -> dict[str, Any]:
        return {"role": "leader", "epoch": 1}

    def reload_policies(self, trigger: str) -> ReloadResult:
        self.reloads.append(trigger)
        self.last_reload = ReloadResult(True, trigger, NOW)
        return self.last_reload


def api_config(tmp: Path, **api: Any) -> ApiConfig:
    """An `api:` section with two credentials, their tokens in files under `tmp` (relative paths,
    resolved against `tmp` like scaler.yaml's directory): ops (read, operate) and reader (read)."""
    (tmp / "ops-token").write_text(OPS_TOKEN + "\n")
    (tmp / "read-token").write_text(READ_TOKEN + "\n")
    doc: dict[str, Any] = {"credentials": [
        {"name": "ops", "token": {"file": "ops-token"}, "scopes": ["read", "operate"]},
        {"name": "reader", "token": {"file": "read-token"}, "scopes": ["read"]}]}
    doc.update(api)
    return ApiConfig.model_validate(doc, context={"base_dir": tmp})


def self_signed(directory: Path, name: str = "localhost", ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh self-signed certificate for `name` and `ip` (valid from an hour ago for a day) and its
    unencrypted key, as PEM files in `directory`: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name),
                                                        x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
