"""The API's TLS certificate and key files (`api.tls`), checked when scaler.yaml is loaded and again
when the API starts, so that a bad file is named in one line instead of an OpenSSL traceback.

Standard library only (`ssl`): no network, nothing written.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    # OpenSSL would otherwise prompt on the terminal (or fail obscurely under systemd).
    raise _Encrypted


def check_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context loaded from `cert` (PEM, the server's certificate first, then any
    intermediates) and `key` (PEM, unencrypted). ValueError naming the file and the problem."""
    for what, path in (("cert", cert), ("key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError:
        raise ValueError(f"cert: {cert} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_password)
    except _Encrypted:
        raise ValueError(f"key: {key} is encrypted; give an unencrypted key file (mode 0600)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"key: {key} is not the key of the certificate in {cert}") from None
        detail = f" ({exc.reason})" if exc.reason else ""
        raise ValueError(f"key: {key} holds no usable PEM private key{detail}") from None
    return ctx
