"""Keeping SQLite usable in a forked child: the process's connections are closed at fork.

SQLite keeps per-process state for every open database file: the bookkeeping of its POSIX
locks and the mapping of the WAL index, with mutexes around both. A forked child inherits
that state exactly as it was at the fork. A lock that a parent thread held in the middle
of a transaction then stays held in the child for good (its writes fail with "database is
locked"), and a mutex held in the middle of a call deadlocks the child's first open.
Opening fresh connections in the child is not enough: they find the inherited state.

So every SQLite call of the store runs inside :data:`GATE`. Before a fork, the gate lets
the calls in flight finish, holds back new ones, and closes every connection of the
process; the child then starts with no SQLite state at all, and the parent's threads and
loops reopen their connections on their next call (:attr:`ForkGate.epoch` tells them).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["GATE", "ForkGate"]

log = logging.getLogger("asynccache")

#: How long a fork waits for the SQLite calls in flight (each is bounded by the store's
#: ``busy_timeout``); past it the fork goes ahead without closing the connections.
FORK_WAIT = 30.0


class ForkGate:
    """Every SQLite call of the process passes through it; a fork waits until none is in
    flight, then closes the process's connections (see the module docstring).

    ``with GATE:`` around each use of a connection; :meth:`opened` / :meth:`close` when a
    connection is made or closed by its owner. An owner whose connection was opened in an
    earlier :attr:`epoch` drops it and opens another.
    """

    def __init__(self) -> None:
        #: Bumped at each fork: connections opened before it are closed (or, in a child
        #: forked while a call would not finish, inherited and never touched again).
        self.epoch = 0
        #: Connections that were open in the parent at a fork that could not close them:
        #: kept referenced and never closed, as SQLite requires of a child.
        self.inherited: list[sqlite3.Connection] = []
        self._reset()

    def _reset(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False
        self._open: dict[int, sqlite3.Connection] = {}

    def __enter__(self) -> None:
        with self._changed:
            while self._forking:
                self._changed.wait()
            self._active += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        with self._changed:
            self._active -= 1
            if self._forking and not self._active:
                self._changed.notify_all()

    def opened(self, connection: sqlite3.Connection) -> int:
        """Track a new connection (inside the gate); the epoch it belongs to."""
        with self._changed:
            self._open[id(connection)] = connection
            return self.epoch

    def current(self, connection: sqlite3.Connection | None, epoch: int,
                connect: Callable[[], sqlite3.Connection]) -> tuple[sqlite3.Connection, int]:
        """(Inside the gate.) ``(connection, epoch)`` while no fork closed it since, else a
        new connection from ``connect`` and the current epoch."""
        if connection is not None:
            if epoch == self.epoch:
                return connection, epoch
            self.close(connection)
        return connect(), self.epoch

    def close(self, connection: sqlite3.Connection) -> None:
        """Close a connection of this process; one a fork already closed (or left to the
        parent) is left alone."""
        with self._changed:
            tracked = self._open.pop(id(connection), None) is connection
        if tracked:
            connection.close()

    def before_fork(self) -> None:
        with self._changed:
            self._forking = True
            deadline = time.monotonic() + FORK_WAIT
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            if self._active:
                log.warning("asynccache: fork while an SQLite call did not finish within "
                            "%.0f s; the child cannot use SQLite files this process has "
                            "open", FORK_WAIT)
            else:
                for connection in self._open.values():
                    try:
                        connection.close()
                    except sqlite3.Error:  # closing is best effort; the child is what matters
                        pass
                self._open.clear()
            self.epoch += 1

    def after_fork_in_parent(self) -> None:
        with self._changed:
            self._forking = False
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        # The threads that held or awaited the gate are gone: a fresh one, no calls.
        self.inherited.extend(self._open.values())
        self._reset()


GATE = ForkGate()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=GATE.before_fork, after_in_parent=GATE.after_fork_in_parent,
                        after_in_child=GATE.after_fork_in_child)
