"""Real servers for the suite, started once per session and stopped by process.

In CI (``CI=true``) a server that cannot start fails the run; elsewhere its tests skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.servers.processes import ServiceUnavailable, start_valkey

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_unavailable(name: str, exc: Exception) -> None:
    message = f"{name} could not start: {exc}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def private_valkey(tmp_path):
    """A valkey-server of the test's own, free to be killed, paused and restarted."""
    try:
        server = start_valkey(tmp_path / "valkey", search=False, name="valkey-private")
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    yield server
    server.stop()  # resumes a paused server first; a no-op on a killed one
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def valkey_server():
    """One valkey-server with RediSearch on 127.0.0.1 for the whole session."""
    try:
        server = start_valkey()
    except ServiceUnavailable as exc:
        service_unavailable("valkey-server", exc)
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


