"""Encryption at rest and compression of cached values, applied inside the envelope.

A cache given ``encryption_keys`` seals every entry's payload with AES-GCM (an
authenticated cipher from the ``cryptography`` package) before it leaves the process;
a cache given ``compression`` compresses payloads above ``compression_min_size`` bytes
first (zstd when ``zstandard`` is installed, else the standard library's zlib). Both are
recorded in the entry's flags, so entries written with other settings still decode.

What encryption protects: the cached value (the LLM's answer, an embedding, a
transcription) against anyone who can read the store (a leaked Redis dump, a bucket made
public, a backup) and against tampering (the header with created-at, expires-at and the
flags is authenticated too, so an attacker cannot extend an entry's life). What it does
not protect: stored keys (hashes of the request), TTLs, entry sizes, counters written by
``increment`` (stored as bare numbers so stores can add to them atomically), and the
vector and filter fields of semantic stores, which must stay searchable.

Key rotation: ``encryption_keys`` is a list; the first key encrypts, every key decrypts.
Each entry carries a 4-byte key id (derived from the key by SHA-256, revealing nothing
about it), so a read picks its key at once. An entry no key opens, an entry whose
ciphertext was altered, and an unencrypted entry read by a cache that encrypts are
misses, counted as corrupt entries: never a crash and never plaintext served.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import zlib
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigurationError, MissingExtraError

__all__ = [
    "COMPRESSED_ZLIB", "COMPRESSED_ZSTD", "DEFAULT_COMPRESSION_MIN_SIZE", "ENCRYPTED", "FLAGS",
    "PLAIN", "Unreadable", "ValueProtection", "generate_key", "key_id",
]

#: Entry flags (bits of the envelope's flags byte) owned by this module.
COMPRESSED_ZLIB = 4
ENCRYPTED = 8
COMPRESSED_ZSTD = 16
FLAGS = COMPRESSED_ZLIB | ENCRYPTED | COMPRESSED_ZSTD

DEFAULT_COMPRESSION_MIN_SIZE = 1024
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
_KEY_SIZES = (16, 24, 32)


class Unreadable(ValueError):
    """A protected payload that cannot be opened (wrong key, tampered, unknown codec)."""


def generate_key() -> str:
    """A new random AES-256 key, base64-encoded, for ``encryption_keys``.

    >>> len(base64.b64decode(generate_key()))
    32
    """
    return base64.b64encode(os.urandom(32)).decode()


def _key_bytes(key: object, position: int) -> bytes:
    if isinstance(key, str):
        try:
            raw = base64.b64decode(key.encode(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            try:
                raw = base64.urlsafe_b64decode(key.encode())
            except (binascii.Error, ValueError):
                raw = b""
    elif isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        raise ConfigurationError(
            f"encryption_keys[{position}] must be bytes or a base64 str, "
            f"got {type(key).__name__}"
        )
    if len(raw) not in _KEY_SIZES:
        # The key itself is never echoed, only its length.
        raise ConfigurationError(
            f"encryption_keys[{position}] must be 16, 24 or 32 bytes (AES-128/192/256), "
            f"got {len(raw)} bytes; make one with asynccache.protection.generate_key()"
        )
    return raw


def key_id(key: bytes) -> bytes:
    """The 4-byte id stored with each entry sealed by ``key`` (not reversible)."""
    return hashlib.sha256(b"asynccache key id\x00" + key).digest()[:_KEY_ID_SIZE]


class _Zstd:
    def __init__(self) -> None:
        import zstandard

        self._compressor = zstandard.ZstdCompressor(level=3)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._compressor.compress(data))

    def decompress(self, data: bytes) -> bytes:
        return bytes(self._decompressor.decompress(data))


_zstd_codec: list[_Zstd | None] = []


def _zstd_or_none() -> _Zstd | None:
    """The zstd codec, loaded on first use (most caches never need it)."""
    if not _zstd_codec:
        try:
            _zstd_codec.append(_Zstd())
        except ImportError:
            _zstd_codec.append(None)
    return _zstd_codec[0]


class ValueProtection:
    """Seals and opens envelope payloads; built by :class:`~asynccache.base.BaseCache`
    from its ``encryption_keys``, ``compression`` and ``compression_min_size`` settings.

    ``compression``: ``None`` (off), ``"zstd"`` (needs the ``compression`` extra),
    ``"zlib"``, or ``"auto"`` (zstd when installed, else zlib).
    """

    __slots__ = ("_ciphers", "_compress_flag", "_compressor", "_encrypt_id",
                 "compression", "compression_min_size", "encrypts")

    def __init__(self, encryption_keys: Sequence[bytes | str] | None = None,
                 compression: str | None = None,
                 compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE) -> None:
        if isinstance(encryption_keys, str | bytes | bytearray):
            encryption_keys = [encryption_keys]
        keys = [_key_bytes(key, i) for i, key in enumerate(encryption_keys or ())]
        self.encrypts = bool(keys)
        self._ciphers: dict[bytes, Any] = {}
        self._encrypt_id = b""
        if keys:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError as exc:
                raise MissingExtraError(
                    "encryption_keys needs the 'encryption' extra: "
                    "pip install 'asynccache[encryption]'"
                ) from exc
            for key in keys:
                self._ciphers.setdefault(key_id(key), AESGCM(key))
            self._encrypt_id = key_id(keys[0])
        if isinstance(compression_min_size, bool) or not isinstance(compression_min_size, int) \
                or compression_min_size < 0:
            raise ConfigurationError(
                f"compression_min_size must be an int >= 0, got {compression_min_size!r}"
            )
        self.compression_min_size = compression_min_size
        self.compression = compression
        self._compressor: Any = None
        self._compress_flag = 0
        zstd = _zstd_or_none() if compression in ("zstd", "auto") else None
        if compression is None:
            pass
        elif zstd is not None:
            self._compressor, self._compress_flag = zstd.compress, COMPRESSED_ZSTD
        elif compression == "zstd":
            raise MissingExtraError(
                "compression='zstd' needs the 'compression' extra: "
                "pip install 'asynccache[compression]' (or use compression='zlib')"
            )
        elif compression in ("zlib", "auto"):
            self._compressor, self._compress_flag = _zlib_compress, COMPRESSED_ZLIB
        else:
            raise ConfigurationError(
                f"compression must be None, 'zstd', 'zlib' or 'auto', got {compression!r}"
            )

    @property
    def active(self) -> bool:
        """Whether writes are changed at all (reads of protected entries always work)."""
        return self.encrypts or self._compressor is not None

    def seal(self, header_without_flags: bytes, flags: int, payload: bytes) -> tuple[int, bytes]:
        """Compress and/or encrypt ``payload``; return the new flags and payload.

        ``header_without_flags`` is authenticated with the ciphertext (with the final
        flags appended), so no part of the header can be changed unnoticed.
        """
        if self._compressor is not None and len(payload) >= self.compression_min_size:
            packed = self._compressor(payload)
            if len(packed) < len(payload):
                payload, flags = packed, flags | self._compress_flag
        if self.encrypts:
            flags |= ENCRYPTED
            nonce = os.urandom(_NONCE_SIZE)
            sealed = self._ciphers[self._encrypt_id].encrypt(
                nonce, payload, header_without_flags + bytes((flags,))
            )
            payload = self._encrypt_id + nonce + sealed
        return flags, payload

    def open(self, header_without_flags: bytes, flags: int, payload: bytes) -> bytes:
        """The plain payload of a stored entry; raise :class:`Unreadable` if it cannot be."""
        if flags & ENCRYPTED:
            cipher = self._ciphers.get(payload[:_KEY_ID_SIZE])
            if cipher is None:
                raise Unreadable(
                    "entry is encrypted with a key this cache does not have"
                    if self.encrypts else "entry is encrypted and this cache has no key"
                )
            start = _KEY_ID_SIZE + _NONCE_SIZE
            try:
                payload = cipher.decrypt(payload[_KEY_ID_SIZE:start], payload[start:],
                                         header_without_flags + bytes((flags,)))
            except Exception as exc:  # cryptography's InvalidTag: tampered or truncated
                raise Unreadable("entry failed authentication (altered or truncated)") from exc
        elif self.encrypts:
            raise Unreadable("entry is not encrypted and this cache requires encryption")
        if flags & COMPRESSED_ZSTD:
            zstd = _zstd_or_none()
            if zstd is None:
                raise Unreadable("entry is zstd-compressed and zstandard is not installed")
            try:
                return zstd.decompress(payload)
            except Exception as exc:
                raise Unreadable(f"entry is not valid zstd: {exc}") from exc
        if flags & COMPRESSED_ZLIB:
            try:
                return zlib.decompress(payload)
            except zlib.error as exc:
                raise Unreadable(f"entry is not valid zlib: {exc}") from exc
        return payload

    def describe(self) -> dict[str, Any]:
        """Non-secret settings: never a key, only how many there are."""
        described: dict[str, Any] = {}
        if self.encrypts:
            described["encryption"] = f"AES-GCM ({len(self._ciphers)} key(s))"
        if self._compressor is not None:
            described["compression"] = (
                "zstd" if self._compress_flag == COMPRESSED_ZSTD else "zlib"
            )
            described["compression_min_size"] = self.compression_min_size
        return described

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"ValueProtection({settings})"


def _zlib_compress(data: bytes) -> bytes:
    # Level 1: most of level 6's saving on LLM text at a fraction of the time; a cache
    # write is on the request path.
    return zlib.compress(data, 1)


#: Reads need no settings: compressed entries open anywhere, encrypted ones need a key.
PLAIN = ValueProtection()
