"""Developer tasks: ``nox -s tests | lint | typecheck | docs | bench | demo``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, with its real servers (started and stopped by the tests).

    Installs the Debian server packages first when it can (root with apt-get): see
    ``.ci/install-servers``.
    """
    session.run("bash", ".ci/install-servers", external=True)
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "asynccache", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with ``mkdocs build --strict`` into ``site/``.

    ``nox -s docs -- serve`` serves it with live reload instead. The examples on the pages
    are executed by the test suite (tests/test_docs.py).
    """
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the peers; ``nox -s bench -- --quick``."""
    session.install("-e", ".[dev,bench-peers]")
    session.run("asynccache", "bench", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The simulated LLM workload on the embedded in-memory cache."""
    session.install("-e", ".")
    session.run("asynccache", "demo", *session.posargs)
