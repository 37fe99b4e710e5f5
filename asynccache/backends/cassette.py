"""Cassettes: LLM answers recorded to a file you commit, replayed offline in tests.

``Cache(type="cassette", path="tests/cassettes/chat.json", record_mode="replay")`` is a
cache whose entries live in one JSON file, each with the request that produced it:

* ``record``: start empty; calls go upstream and every answer is written to the file
  (a call repeated in the same run is answered from what was just recorded);
* ``replay``: answers come only from the file; a request that is not in it raises
  :class:`~asynccache.exceptions.ReplayMissError` before any upstream call, naming the
  nearest recorded request and the fields that differ. The file is never written;
* ``new_episodes``: replay what is recorded, record what is missing;
* ``off``: the cassette is ignored: every call goes upstream and nothing is written.

The file is meant for code review: entries sorted by key, keys sorted, two-space
indent, UTF-8, one trailing newline; floats written in their shortest round-trip form,
so the same answers give the same bytes on every Python version and platform. Requests
are recorded as the key sees them (credentials, endpoints, headers left out) and both
requests and answers are scrubbed of API keys, bearer tokens and URL credentials
(:func:`~asynccache.recording.scrub`). Values are stored as JSON, losslessly: streamed
answers keep their chunks, embeddings their vectors, ``bytes`` are base64-tagged.

For scripts and notebooks, use the cache directly; the file is written after each new
answer (``record`` / ``new_episodes``) and on close.
"""

from __future__ import annotations

import base64
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson

from .. import envelope
from ..contract import Backend, WriteItem
from ..exceptions import ConfigurationError
from ..keys import namespace_prefix
from ..recording import RecordedRequest, scrub

__all__ = [
    "FORMAT", "RECORD_MODES", "Cassette", "CassetteBackend", "validate_record_mode",
]

#: Record modes, as the pytest option ``--llm-cache-mode`` spells them.
RECORD_MODES = ("record", "replay", "new_episodes", "off")
FORMAT = "asynccache-cassette-1"
_BYTES_TAG = "$base64"


def validate_record_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`RECORD_MODES`; raise naming it otherwise."""
    if mode not in RECORD_MODES:
        raise ConfigurationError(
            f"record mode must be one of {', '.join(RECORD_MODES)}, got {mode!r}")
    return str(mode)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    return value


def _from_json_value(value: Any) -> Any:
    if isinstance(value, dict) and list(value) == [_BYTES_TAG]:
        return base64.b64decode(value[_BYTES_TAG])
    return value


class Cassette:
    """The entries of one cassette file, shared by every cache that uses that file.

    Thread-safe; :meth:`save` writes atomically (temporary file, then rename), so a run
    killed mid-write leaves the previous file intact.
    """

    def __init__(self, path: str | os.PathLike[str], record_mode: str = "replay") -> None:
        self.path = Path(path)
        self.record_mode = validate_record_mode(record_mode)
        self._lock = threading.Lock()
        self.values: dict[str, bytes] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        # Record mode starts empty: the file is rewritten even if nothing is recorded, so a
        # test that no longer calls a model leaves no stale answers behind.
        self.dirty = self.record_mode == "record"
        self.existed = self.path.is_file()
        if self.record_mode in ("replay", "new_episodes") and self.existed:
            self._load()

    @property
    def writes_file(self) -> bool:
        return self.record_mode in ("record", "new_episodes")

    def _load(self) -> None:
        try:
            document = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigurationError(f"cassette {self.path} is not readable: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ConfigurationError(
                f"cassette {self.path} is not an asynccache cassette (format {FORMAT!r})")
        for position, entry in enumerate(document.get("entries") or []):
            if not (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                    and "value" in entry):
                raise ConfigurationError(
                    f"cassette {self.path}: entry {position} needs a 'key' and a 'value'")
            key = entry["key"]
            # Recorded answers never expire: a cassette is replayed long after recording.
            self.values[key] = envelope.encode(_from_json_value(entry["value"]), 0.0, None, key)
            if isinstance(entry.get("request"), dict):
                self.requests[key] = entry["request"]

    def dumps(self) -> bytes:
        """The file's bytes: stable order and formatting, secrets scrubbed."""
        with self._lock:
            items = sorted(self.values.items())
            requests = dict(self.requests)
        entries = []
        for key, data in items:
            try:
                value = envelope.decode(data).value
            except envelope.CorruptEntry:
                continue
            entries.append({"key": key, "request": requests.get(key),
                            "value": scrub(_to_json_value(value))})
        document = {"format": FORMAT, "entries": entries}
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    def save(self, *, force: bool = False) -> bool:
        """Write the file if this mode writes and something changed; return whether it did."""
        if not self.writes_file or not (self.dirty or force):
            return False
        data = self.dumps()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp",
                                             dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.dirty = False
        return True

    # -- used by the backend ---------------------------------------------------------------

    def get(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.record_mode == "off":
            return [None] * len(keys)
        with self._lock:
            return [self.values.get(key) for key in keys]

    def put(self, items: Sequence[WriteItem]) -> None:
        if self.record_mode == "off":
            return
        with self._lock:
            for key, data, _ttl in items:
                self.values[key] = data
            self.dirty = True

    def put_requests(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if self.record_mode == "off":
            return
        with self._lock:
            for key, request in items:
                self.requests[key] = dict(request)
            self.dirty = True

    def delete(self, keys: Sequence[str]) -> int:
        with self._lock:
            deleted = 0
            for key in keys:
                if self.values.pop(key, None) is not None:
                    deleted += 1
                self.requests.pop(key, None)
            self.dirty = self.dirty or deleted > 0
            return deleted

    def clear(self, prefix: str) -> int:
        with self._lock:
            doomed = [key for key in self.values if key.startswith(prefix)]
            for key in doomed:
                del self.values[key]
                self.requests.pop(key, None)
            self.dirty = self.dirty or bool(doomed)
            return len(doomed)

    def recorded(self, prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [RecordedRequest(key, request) for key, request in sorted(self.requests.items())
                    if key.startswith(prefix) and key in self.values]

    def __len__(self) -> int:
        return len(self.values)


class CassetteBackend(Backend):
    """A cache backend on a :class:`Cassette` file (``Cache(type="cassette", ...)``).

    Pass ``path`` and ``record_mode`` (default ``"replay"``), or a shared ``cassette``.
    It is also the cache's request store, so misses can be explained.
    """

    name: ClassVar[str] = "cassette"
    remote: ClassVar[bool] = False
    loop_free: ClassVar[bool] = True
    max_batch: ClassVar[int] = 100_000
    #: Streamed answers keep their original chunks (the wrappers read this).
    keeps_stream_chunks: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str] | None = None, record_mode: str = "replay",
                 cassette: Cassette | None = None) -> None:
        if cassette is None:
            if path is None:
                raise ConfigurationError(
                    "Cache(type='cassette') needs path='...json' (or cassette=Cassette(...))")
            cassette = Cassette(path, record_mode)
        elif not isinstance(cassette, Cassette):
            raise ConfigurationError(f"cassette must be a Cassette, got {cassette!r:.80}")
        self.cassette = cassette

    @property
    def replay_only(self) -> bool:
        """In ``replay`` mode a miss must never reach upstream."""
        return self.cassette.record_mode == "replay"

    @property
    def description(self) -> str:
        state = "" if self.cassette.existed or self.cassette.record_mode != "replay" else (
            ", which does not exist yet")
        return f"cassette {self.cassette.path} (mode {self.cassette.record_mode}{state})"

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.cassette.get(keys)

    async def write_many(self, items: Sequence[WriteItem]) -> list[bool] | None:
        self.cassette.put(items)
        self.cassette.save()
        return None

    async def remove_many(self, keys: Sequence[str]) -> int:
        deleted = self.cassette.delete(keys)
        self.cassette.save()
        return deleted

    async def remove_prefix(self, prefix: str) -> int:
        cleared = self.cassette.clear(prefix)
        self.cassette.save()
        return cleared

    async def record_requests(self, namespace: str | None,
                              items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Keep each request next to its answer in the file."""
        self.cassette.put_requests(items)
        self.cassette.save()

    async def recorded_requests(self, namespace: str | None) -> list[RecordedRequest]:
        """The recorded requests of ``namespace`` (all of them for no namespace)."""
        return self.cassette.recorded(namespace_prefix(namespace))

    async def check_health(self) -> None:
        return None

    async def aclose(self) -> None:
        self.cassette.save()

    def __len__(self) -> int:
        return len(self.cassette)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.cassette.path), "record_mode": self.cassette.record_mode}
