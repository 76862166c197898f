"""Certificates for the broker's TLS listener: a private CA and a server certificate.

`gas-safety stack up` makes them with the system's `openssl` under `<stack home>/tls/` and
opens a TLS listener (`mqtt_tls_port` in runtime.json); devices get `ca.crt` to verify the
broker. `ensure_certs(folder, hosts)` makes a set for a deployment's host names; sites with
their own PKI put their files at the same paths instead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def ensure_certs(
    folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825
) -> dict[str, Path]:
    """Create ca.crt/ca.key and server.crt/server.key unless they exist; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    if all(p.exists() for p in files.values()):
        return files

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        str(days),
        "-subj",
        "/CN=gas-safety private CA",
        "-keyout",
        str(files["ca.key"]),
        "-out",
        str(files["ca.crt"]),
    )
    csr = folder / "server.csr"
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={hosts[0]}",
        "-keyout",
        str(files["server.key"]),
        "-out",
        str(csr),
    )
    ext = folder / "server.ext"
    alt = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    ext.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(files["ca.crt"]),
        "-CAkey",
        str(files["ca.key"]),
        "-CAcreateserial",
        "-days",
        str(days),
        "-extfile",
        str(ext),
        "-out",
        str(files["server.crt"]),
    )
    csr.unlink()
    for p in (files["ca.key"], files["server.key"]):
        p.chmod(0o600)
    return files
