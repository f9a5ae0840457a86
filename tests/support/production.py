"""deploy/examples/production as /etc/scaler would hold it, under a test's directory, with every file
it names (secrets, clouds.yaml) made up."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "production"
SECRETS = ("snmp-auth", "snmp-priv", "alertmanager-token", "prometheus-token", "ops-token")


def install(dst: Path) -> Path:
    """The example as /etc/scaler would hold it, under `dst`, with the files it names."""
    shutil.copytree(EXAMPLE, dst, dirs_exist_ok=True)
    config = dst / "scaler.yaml"
    config.write_text(config.read_text().replace("/etc/scaler/", f"{dst}/"))
    (dst / "secrets").mkdir()
    for name in SECRETS:
        (dst / "secrets" / name).write_text(f"{name}-0123456789\n")
    (dst / "clouds.yaml").write_text("clouds:\n  lb-prod:\n    auth_type: v3applicationcredential\n")
    (dst / "tls").mkdir()
    self_signed(dst / "tls" / "api.crt", dst / "tls" / "api.key")
    return config


def self_signed(cert_path: Path, key_path: Path) -> None:
    """A throwaway self-signed certificate and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scaler.example.net")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
