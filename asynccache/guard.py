"""The error policy between the cache and a backend: timeouts, circuit breaker, logging.

:class:`GuardedBackend` wraps a backend so that no backend exception ever reaches the
caller: a failed read is a miss, a failed write is ``False``; both are counted, and logged
once per burst rather than once per call (a dead Redis under 1,000 calls/s must not write
1,000 log lines a second). After ``failure_threshold`` consecutive failures the circuit
opens: calls skip the backend at no cost, while a background task probes it (a cheap
``ping``) after 0.05 s, then at growing intervals up to ``cooldown`` seconds (0.25 s by
default). The first successful probe closes the circuit, so with the defaults the
backend is used again within about a quarter of a second of coming back, and no caller
ever waits on a probe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .bridge import bridge_loop, is_caller_loop
from .exceptions import ConfigurationError
from .stats import SAMPLE_EVERY, CacheStats

if TYPE_CHECKING:
    from .contract import Backend, WriteItem

__all__ = [
    "DEFAULT_COOLDOWN",
    "FIRST_PROBE_DELAY",
    "BurstLogger",
    "CircuitBreaker",
    "CircuitState",
    "GuardedBackend",
    "sync_primitive",
]

logger = logging.getLogger("asynccache")
T = TypeVar("T")

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    _timeout = None


class CircuitState(str, enum.Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


_CLOSED = CircuitState.closed


#: Default longest pause between two background probes of an open circuit (seconds).
DEFAULT_COOLDOWN = 0.25
#: Pause before the first probe; later pauses double up to the cool-down.
FIRST_PROBE_DELAY = 0.05


class CircuitBreaker:
    """Counts consecutive failures; opens after ``failure_threshold``.

    While open, calls are refused (:meth:`allow` is false) and a background probe
    (run by :class:`GuardedBackend`) decides when to close: the pause between probes
    starts at 0.05 s and doubles up to ``cooldown`` seconds. ``failure_threshold=0``
    turns the breaker off.
    """

    def __init__(self, failure_threshold: int = 5, cooldown: float = DEFAULT_COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown <= 0:
            raise ConfigurationError(f"breaker_cooldown must be > 0 seconds, got {cooldown!r}")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CircuitState.closed
        self.consecutive_failures = 0
        self._opened_at = 0.0
        #: Background probes sent while open, and how many of them failed.
        self.probes = 0
        self.failed_probes = 0
        #: Seconds the circuit stayed open the last time it closed again.
        self.last_outage: float | None = None

    def allow(self) -> bool:
        """Whether a call may go to the backend now (never while the circuit is open)."""
        return self.state is CircuitState.closed or self.failure_threshold <= 0

    def first_probe_delay(self) -> float:
        return min(FIRST_PROBE_DELAY, self.cooldown)

    def next_probe_delay(self, delay: float) -> float:
        return min(delay * 2, self.cooldown)

    def record_success(self) -> None:
        if self.state is not CircuitState.closed or self.consecutive_failures:
            with self._lock:
                if self.state is not CircuitState.closed:
                    self.last_outage = self._clock() - self._opened_at
                    logger.warning(
                        "asynccache: backend recovered, circuit closed after %.2f s open "
                        "(%d probes)", self.last_outage, self.probes,
                    )
                self.state, self.consecutive_failures = CircuitState.closed, 0

    def record_failure(self) -> bool:
        """Count a failure; return whether this one opened the circuit."""
        with self._lock:
            self.consecutive_failures += 1
            if (self.failure_threshold > 0 and self.state is CircuitState.closed
                    and self.consecutive_failures >= self.failure_threshold):
                logger.warning(
                    "asynccache: %d consecutive backend failures, circuit open; probing "
                    "in the background every %.2f s at most",
                    self.consecutive_failures, self.cooldown,
                )
                self.state, self._opened_at = CircuitState.open, self._clock()
                return True
            return False

    def probe_started(self) -> None:
        # The circuit stays "open" while a background probe runs: callers are skipped
        # all along, whatever the probe is doing.
        with self._lock:
            self.probes += 1

    def probe_failed(self) -> None:
        with self._lock:
            self.failed_probes += 1
            self.consecutive_failures += 1


class BurstLogger:
    """Logs the first error of a burst, then a summary at most every ``interval`` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def error(self, operation: str, backend: str, exc: BaseException,
              timeout: float | None = None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} similar errors suppressed)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        reason = _safe_message(exc)
        if isinstance(exc, TimeoutError) and not reason:
            # asyncio's timeout carries no message: say what happened.
            reason = f"timed out after {timeout:g} s" if timeout is not None else "timed out"
        logger.warning(
            "asynccache: %s on %s failed: %s: %s%s",
            operation, backend, type(exc).__name__, reason, extra,
        )


def _safe_message(exc: BaseException) -> str:
    from .redact import redact

    return redact(str(exc))[:500]


#: Probe tasks in flight, held strongly (the event loop keeps only weak references).
_PROBES: set[asyncio.Task[None]] = set()


def sync_primitive(backend: Backend, name: str) -> Callable[[Any], Any]:
    """A synchronous form of a loop-free backend's primitive ``name`` (``read_many``...).

    A backend may offer one itself as ``<name>_now``; ``read_one`` (one key in, its bytes
    or ``None`` out) and ``write_one`` (one item in, whether it was stored out) may be
    offered the same way. Otherwise, or when the async primitive was replaced (a
    subclass overriding it alone, a wrapper set on the instance), the coroutine is
    driven to its end in the caller, which a loop-free backend (one that never awaits
    the loop) allows; one that does wait breaks that promise and raises ``RuntimeError``.
    """
    many = {"read_one": "read_many", "write_one": "write_many"}.get(name, name)
    method_name = many
    drive = _driver(backend, many)
    if name == "read_one":
        read = drive
        drive = lambda key: read((key,))[0]  # noqa: E731
    elif name == "write_one":
        write = drive
        drive = lambda item: (write((item,)) or (True,))[0]  # noqa: E731
    own = getattr(backend, name + "_now", None)
    if own is None or not _same_owner(type(backend), name + "_now", many):
        return drive
    patched = getattr(backend, "__dict__", {})

    def call(argument: Any) -> Any:
        if method_name in patched:  # replaced on the instance after construction
            return drive(argument)
        return own(argument)

    return call


def _driver(backend: Backend, name: str) -> Callable[[Any], Any]:
    def drive(argument: Any) -> Any:
        step = getattr(backend, name)(argument)
        try:
            step.send(None)
        except StopIteration as done:
            return done.value
        step.close()
        raise RuntimeError(f"{backend.name} backend is loop_free but its {name} awaited")

    return drive


def _same_owner(cls: type, fast: str, primitive: str) -> bool:
    """Whether ``fast`` and ``primitive`` come from the same class of ``cls``'s MRO.

    A subclass that overrides ``read_many`` alone must not be bypassed by its parent's
    ``read_many_now``.
    """
    def owner(attribute: str) -> type | None:
        return next((k for k in cls.__mro__ if attribute in vars(k)), None)

    return owner(fast) is owner(primitive)


class GuardedBackend:
    """A backend behind timeouts, a circuit breaker and the fail-open error policy."""

    def __init__(self, backend: Backend, stats: CacheStats, *, timeout: float | None,
                 breaker: CircuitBreaker) -> None:
        self.backend = backend
        self.stats = stats
        self.timeout = timeout if backend.remote else None
        self.breaker = breaker
        self.log = BurstLogger()
        self._probe: asyncio.Future[None] | concurrent.futures.Future[None] | None = None
        self._probe_loop: asyncio.AbstractEventLoop | None = None
        # run_now times the first call of each operation, then one in SAMPLE_EVERY.
        self._countdowns: dict[str, int] = {}
        self._sampled = not backend.remote
        # The single-key lean path (read_one_now / write_one_now) of loop-free backends.
        self._reads_left = self._writes_left = 1
        if backend.loop_free:
            self._read_one = sync_primitive(backend, "read_one")
            self._write_one = sync_primitive(backend, "write_one")

    async def _call(self, operation: str, make: Callable[[], Awaitable[T]], fallback: T,
                    skipped: int = 1) -> tuple[bool, T]:
        breaker = self.breaker
        if breaker.state is not _CLOSED and not breaker.allow():
            self.stats.add("skipped_open_circuit", skipped)
            self._ensure_probe()
            # One pass of the loop: a caller retrying in a tight loop would otherwise never
            # suspend, and the probe that closes the circuit (a task on this loop) would
            # never run.
            await asyncio.sleep(0)
            return False, fallback
        started: float | None
        if self._sampled:
            # An in-process store answers in microseconds: timing every call (and taking
            # the stats lock for it) would cost a noticeable share of the call.
            left = self._countdowns.get(operation, 1) - 1
            self._countdowns[operation] = left or SAMPLE_EVERY
            started = None if left else time.perf_counter()
        else:
            started = time.perf_counter()
        try:
            if self.timeout is None:
                result = await make()
            elif _timeout is not None:
                async with _timeout(self.timeout):
                    result = await make()
            else:  # pragma: no cover - Python 3.10
                result = await asyncio.wait_for(make(), self.timeout)
        except Exception as exc:
            self._failed(operation, exc, started)
            return False, fallback
        if started is not None:
            self.stats.observe(operation, time.perf_counter() - started)
        if breaker.consecutive_failures or breaker.state is not _CLOSED:
            breaker.record_success()
        return True, result

    def _ensure_probe(self) -> None:
        """Make sure one background probe runs while the circuit is open."""
        if self._probe_alive():
            return
        with self.breaker._lock:
            if self._probe_alive():
                return
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:  # a loop-free backend's sync twin: no loop in this thread
                loop = None
            if loop is None or is_caller_loop(loop):
                # A sync caller's own loop runs only during its calls: probe from the
                # bridge loop, which always runs.
                self._probe_loop = bridge_loop()
                self._probe = asyncio.run_coroutine_threadsafe(
                    self._probe_until_closed(), self._probe_loop)
                return
            task = loop.create_task(self._probe_until_closed(), name="asynccache-probe")
            self._probe, self._probe_loop = task, loop
        _PROBES.add(task)
        task.add_done_callback(_PROBES.discard)

    def _probe_alive(self) -> bool:
        probe, loop = self._probe, self._probe_loop
        return (probe is not None and loop is not None and not probe.done()
                and loop.is_running())

    async def _probe_until_closed(self) -> None:
        breaker = self.breaker
        delay = breaker.first_probe_delay()
        while breaker.state is not CircuitState.closed:
            await asyncio.sleep(delay)
            if breaker.state is CircuitState.closed:
                return
            breaker.probe_started()
            try:
                if self.timeout is None:
                    await self.backend.check_health()
                else:
                    await asyncio.wait_for(self.backend.check_health(), self.timeout)
            except Exception:
                breaker.probe_failed()
                delay = breaker.next_probe_delay(delay)
                continue
            breaker.record_success()
            return

    def run_now(self, operation: str, primitive: Callable[[Any], T], argument: Any,
                fallback: T, skipped: int = 1) -> tuple[bool, T]:
        """Call a loop-free backend's synchronous primitive (:func:`sync_primitive`) now.

        The lean path of in-process backends: no task, no timeout (nothing can hang), the
        same fail-open policy and breaker as :meth:`_call`, and one call in
        :data:`~asynccache.stats.SAMPLE_EVERY` timed.
        """
        countdowns = self._countdowns
        left = countdowns.get(operation, 1) - 1
        if left and self.breaker.state is _CLOSED:
            countdowns[operation] = left
            try:
                return True, primitive(argument)
            except Exception as exc:
                self._failed(operation, exc, None)
                return False, fallback
        countdowns[operation] = SAMPLE_EVERY
        return self._run_timed(operation, primitive, argument, fallback, skipped)

    def read_one_now(self, stored: str) -> bytes | None:
        """One key's bytes from a loop-free backend, or ``None`` (a miss or a failure).

        :meth:`run_now` for the single get, kept to one call: the untimed calls between
        two sampled ones only check that the circuit is closed.
        """
        left = self._reads_left - 1
        if left and self.breaker.state is _CLOSED:
            self._reads_left = left
            try:
                return self._read_one(stored)
            except Exception as exc:
                self._failed("get", exc, None)
                return None
        self._reads_left = SAMPLE_EVERY
        return self._run_timed("get", self._read_one, stored, None)[1]

    def write_one_now(self, item: WriteItem) -> bool:
        """Store one item in a loop-free backend; whether it was stored (see read_one_now)."""
        left = self._writes_left - 1
        if left and self.breaker.state is _CLOSED:
            self._writes_left = left
            try:
                return bool(self._write_one(item))
            except Exception as exc:
                self._failed("set", exc, None)
                return False
        self._writes_left = SAMPLE_EVERY
        ok, stored = self._run_timed("set", self._write_one, item, False)
        return ok and bool(stored)

    def _run_timed(self, operation: str, primitive: Callable[[Any], T], argument: Any,
                   fallback: T, skipped: int = 1) -> tuple[bool, T]:
        breaker = self.breaker
        if breaker.state is not _CLOSED and not breaker.allow():
            self.stats.add("skipped_open_circuit", skipped)
            self._ensure_probe()
            return False, fallback
        started = time.perf_counter()
        try:
            result = primitive(argument)
        except Exception as exc:
            self._failed(operation, exc, started)
            return False, fallback
        self.stats.observe(operation, time.perf_counter() - started)
        if breaker.consecutive_failures:
            breaker.record_success()
        return True, result

    def _failed(self, operation: str, exc: Exception, started: float | None) -> None:
        # The calls after a failure take the timed path, whose success resets the breaker.
        self._reads_left = self._writes_left = 1
        self._countdowns.clear()
        if started is not None:
            self.stats.observe(operation, time.perf_counter() - started)
        self.stats.add("timeouts" if isinstance(exc, TimeoutError) else "errors")
        if self.breaker.record_failure():
            self._ensure_probe()
        self.log.error(operation, self.backend.name, exc, self.timeout)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        empty: list[bytes | None] = []
        ok, found = await self._call("get", lambda: self.backend.read_many(keys), empty, len(keys))
        if not ok or len(found) != len(keys):
            return [None] * len(keys)
        return found

    async def set_many(self, items: Sequence[WriteItem]) -> list[bool]:
        ok, result = await self._call("set", lambda: self.backend.write_many(items), None,
                                      len(items))
        if not ok:
            return [False] * len(items)
        return [True] * len(items) if result is None else list(result)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return (await self._call("delete", lambda: self.backend.remove_many(keys), 0))[1]

    async def clear(self, prefix: str) -> int:
        return (await self._call("clear", lambda: self.backend.remove_prefix(prefix), 0))[1]

    async def call(self, operation: str, make: Callable[[], Awaitable[T]], fallback: T) -> T:
        return (await self._call(operation, make, fallback))[1]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "circuit": self.breaker.state.value,
            "consecutive_failures": self.breaker.consecutive_failures,
            "probes": self.breaker.probes,
            "failed_probes": self.breaker.failed_probes,
        }
