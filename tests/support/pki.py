"""A throwaway certificate authority for TLS tests: real X.509 from the openssl command, EC keys (fast)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCa:
    """A CA in ``directory``: ``cert`` to trust, :meth:`issue` for server and client certificates."""

    __test__ = False  # a helper, not a test class, for pytest

    directory: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "progemu-test-ca") -> TestCa:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        _openssl("req", "-x509", *_EC, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))
        return cls(directory, cert, key)

    def issue(self, name: str, *, common_name: str, alt_names: tuple[str, ...] = ("IP:127.0.0.1",)) -> Issued:
        """A certificate for server and client use; ``alt_names`` as openssl writes them (IP:…, DNS:…)."""
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        extensions = ["basicConstraints=critical,CA:FALSE", "extendedKeyUsage=serverAuth,clientAuth"]
        if alt_names:
            extensions.append("subjectAltName=" + ",".join(alt_names))
        _openssl("req", "-x509", "-CA", str(self.cert), "-CAkey", str(self.key), *_EC, "-subj", f"/CN={common_name}",
                 *(arg for extension in extensions for arg in ("-addext", extension)),
                 "-keyout", str(key), "-out", str(cert))
        return Issued(cert, key)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)
