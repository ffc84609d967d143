"""Hosts for tests that need more than one machine: Linux network namespaces, made and removed by the test (root).

:func:`two_hosts` makes host A and host B, joined by a veth pair (A ``10.231.0.1/24``, B ``10.231.0.2/24``: the
only link B has), and one more link from the test's own namespace to A alone, through which the test watches A as
an administrator's workstation would. Names carry a random suffix, so that parallel runs do not clash; everything
is removed on the way out, also when the test fails. Servers run inside a host through :meth:`Host.command`
(``ip netns exec``): :class:`Postgres`, :class:`Redis` and :class:`OrthancOnHost` here, and
``tests.support.node_server.NodeServer(..., launcher=host.command())``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.faults import REDIS_SERVER
from tests.support.net import stop_process, wait_for
from tests.support.orthanc_server import ORTHANC, OrthancServer

A_ADDRESS, B_ADDRESS = "10.231.0.1", "10.231.0.2"
"""The pair's addresses: each pair lies in namespaces of its own, so every run may use the same ones."""
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Host:
    """One network namespace: a host with its own interfaces, addresses and ports."""

    name: str
    address: str
    """Where the other host reaches it."""
    watch_address: str | None = None
    """Where the test reaches it (host A only)."""

    def command(self) -> list[str]:
        """The prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.name]

    def run(self, args: Sequence[str], **options: object) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command(), *args], check=True, capture_output=True, text=True, timeout=120,
                              **options)  # type: ignore[call-overload]

    def popen(self, args: Sequence[str], **options: object) -> subprocess.Popen:
        return subprocess.Popen([*self.command(), *args], **options)  # type: ignore[call-overload]

    def kill_leftovers(self) -> None:
        """SIGKILL what a failed test left running on this host (only processes in its namespace, which the test
        started), so that the namespace can go."""
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=30)
        for pid in pids.stdout.split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@dataclass(frozen=True)
class Hosts:
    a: Host
    b: Host


def _free_watch_subnet() -> ipaddress.IPv4Network:
    """A /30 for the test's link to A that no interface of this namespace uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30).stdout
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.232.{random.randrange(256)}.{4 * random.randrange(64)}/30")
        if not any(str(address) in used for address in subnet):
            return subnet
    raise AssertionError("no free 10.232.x.y/30 for the test's link to host A")


@contextmanager
def two_hosts() -> Iterator[Hosts]:
    """Host A and host B, joined by a veth pair; the test reaches A (only) through a link of its own."""
    suffix = uuid.uuid4().hex[:6]
    a_name, b_name = f"progemu-a-{suffix}", f"progemu-b-{suffix}"
    watch = _free_watch_subnet()
    here, on_a = (str(address) for address in list(watch.hosts()))
    a, b = Host(a_name, A_ADDRESS, watch_address=on_a), Host(b_name, B_ADDRESS)
    made: list[Host] = []
    try:
        for host in (a, b):
            _ip("netns", "add", host.name)
            made.append(host)
            host.run(["ip", "link", "set", "lo", "up"])
        _ip("link", "add", f"pa{suffix}", "netns", a_name, "type", "veth", "peer", "name", f"pb{suffix}",
            "netns", b_name)
        a.run(["ip", "addr", "add", f"{A_ADDRESS}/24", "dev", f"pa{suffix}"])
        a.run(["ip", "link", "set", f"pa{suffix}", "up"])
        b.run(["ip", "addr", "add", f"{B_ADDRESS}/24", "dev", f"pb{suffix}"])
        b.run(["ip", "link", "set", f"pb{suffix}", "up"])
        _ip("link", "add", f"pw{suffix}", "type", "veth", "peer", "name", f"pq{suffix}", "netns", a_name)
        _ip("addr", "add", f"{here}/30", "dev", f"pw{suffix}")
        _ip("link", "set", f"pw{suffix}", "up")
        a.run(["ip", "addr", "add", f"{on_a}/30", "dev", f"pq{suffix}"])
        a.run(["ip", "link", "set", f"pq{suffix}", "up"])
        yield Hosts(a, b)
    finally:
        for host in made:
            host.kill_leftovers()
        for host in made:  # removing a namespace removes its veth ends, and with them their peers
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", f"pw{suffix}"], capture_output=True, timeout=30)  # gone already, if A was


class Redis:
    """redis-server on a host, listening on its addresses (the broker of a deployment across hosts)."""

    PORT = 6379

    def __init__(self, host: Host, workdir: Path) -> None:
        self.host, self.workdir = host, workdir
        self.process: subprocess.Popen | None = None

    def url(self, address: str) -> str:
        return f"redis://{address}:{self.PORT}/0"

    def start(self) -> Redis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        addresses = " ".join(a for a in ("127.0.0.1", self.host.address, self.host.watch_address) if a)
        self.process = self.host.popen(
            [REDIS_SERVER, "--port", str(self.PORT), "--bind", addresses, "--protected-mode", "no", "--dir",
             str(self.workdir), "--save", "", "--logfile", str(self.workdir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(host=self.host.watch_address, port=self.PORT, socket_timeout=1)
        wait_for(lambda: self.process.poll() is None and client.ping(), 20, f"redis-server on {self.host.name}")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


class Postgres:
    """A PostgreSQL 15 cluster of its own on a host (initdb and pg_ctl as the postgres user, in a temporary
    directory), trusting connections from the hosts' networks: the job store of a deployment across hosts."""

    PORT = 5432

    def __init__(self, host: Host) -> None:
        if not (PG_BIN / "initdb").exists():
            raise AssertionError(f"{PG_BIN / 'initdb'} missing: the Debian package postgresql-15 is needed")
        self.host = host
        self.root = Path(tempfile.mkdtemp(prefix="progemu-pg-"))  # not under pytest's tmp: postgres must enter it
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.started = False

    def url(self, address: str) -> str:
        return f"postgresql://postgres@{address}:{self.PORT}/postgres"

    def _as_postgres(self, args: Sequence[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args]

    def start(self) -> Postgres:
        subprocess.run(self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                                          "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
                       check=True, capture_output=True, text=True, timeout=120)
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.0.0.0/8 trust\n")  # the hosts' pair and the test's link
        addresses = ",".join(a for a in ("127.0.0.1", self.host.address, self.host.watch_address) if a)
        self.host.run(self._as_postgres([
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
            "-o", f"-p {self.PORT} -c listen_addresses='{addresses}' -c unix_socket_directories='{self.root}' "
                  "-c fsync=off", "start"]))
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.host.run(self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                             "stop"]))
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


class OrthancOnHost(OrthancServer):
    """The test Orthanc (tests.support.orthanc_server), run on a host and reached at its watch address."""

    def __init__(self, host: Host, workdir: Path, **options: object) -> None:
        super().__init__(workdir, **options)  # type: ignore[arg-type]
        self.host = host
        self.config["RemoteAccessAllowed"] = True  # the test calls it from its own namespace (with the password)

    @property
    def url(self) -> str:
        return f"http://{self.host.watch_address}:{self.http_port}"

    def start(self) -> OrthancOnHost:
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        with self.log_path.open("wb") as log:
            self.process = self.host.popen([ORTHANC, "--verbose", str(config_path)], stdout=log,
                                           stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is None and self.get("/system").status_code == 200, 30,
                 f"Orthanc on {self.host.name} (log: {self.log_path})")
        return self
