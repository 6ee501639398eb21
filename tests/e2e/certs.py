"""A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA, the server's pair, a client's pair, and a stranger's pair (signed by
    another CA)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _authority(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
    )
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request = (
        directory / f"{name}.pem",
        directory / f"{name}.key",
        directory / f"{name}.csr",
    )
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions + "\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(request),
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(extfile),
    )
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """Issues every certificate the TLS tests use, under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _authority(directory, "test-ca")
    other_ca = _authority(directory, "other-ca")
    server = _issue(
        directory, "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    )
    client = _issue(directory, "client", ca, "extendedKeyUsage=clientAuth")
    stranger = _issue(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth")
    return Certificates(ca[0], *server, *client, *stranger)
