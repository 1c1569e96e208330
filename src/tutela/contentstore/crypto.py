"""Keys and ciphers.

An encrypted store has one random key set (data key, chunk-id key, gear seed) made when the
store is created.  It is stored only wrapped: AEAD-encrypted under a key derived from the
passphrase (scrypt) or from a key file (HKDF-SHA256), so changing the passphrase never
rewrites data.  Chunk ids are keyed BLAKE3, so stored ids reveal nothing about content, and
the gear seed makes chunk boundaries unpredictable without the key (no size fingerprinting).
"""

from __future__ import annotations

import base64
import itertools
import os
import struct
import weakref
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

ALGORITHMS = ("none", "aes-256-gcm", "chacha20-poly1305")
NONCE = 12
TAG = 16
_NONCE_MASK = (1 << (8 * NONCE)) - 1
#: scrypt cost: 2**15 x 8 x 1 needs 32 MiB and ~0.1 s; recorded per store, so it may change.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class DecryptError(Exception):
    """Authentication failed: wrong key or altered bytes (the caller names what)."""


class Cipher:
    """No encryption: the identity, so the data path has one shape for both cases."""

    algorithm = "none"
    overhead = 0

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext

    def decrypt(self, blob: bytes | memoryview, aad: bytes) -> bytes:
        return bytes(blob)


class AeadCipher(Cipher):
    """AES-256-GCM or ChaCha20-Poly1305 with a unique 96-bit nonce per message.

    Nonces count up from a random start per object (anew in a forked child).  A repeat needs
    two objects' runs to overlap: with N objects of n messages each, a chance of about
    N**2 * n / 2**96, lower than random nonces colliding (about (N*n)**2 / 2**97).
    `aad` binds a message to its role (and a chunk to its id) so blobs cannot be swapped.
    """

    overhead = NONCE + TAG

    def __init__(self, algorithm: str, key: bytes):
        if algorithm == "aes-256-gcm":
            self._aead: AESGCM | ChaCha20Poly1305 = AESGCM(key)
        elif algorithm == "chacha20-poly1305":
            self._aead = ChaCha20Poly1305(key)
        else:
            raise ValueError(f"unknown encryption {algorithm!r}")
        self.algorithm = algorithm
        self._reseed()
        _CIPHERS.add(self)

    def _reseed(self) -> None:
        self._nonces = itertools.count(int.from_bytes(os.urandom(NONCE), "little"))

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        # A counter from a random 96-bit start (per object, and anew in a forked child):
        # never repeats within an object, and two objects' runs overlap with a probability
        # far below that of random nonces colliding; it saves a getrandom() call per
        # message, which let other threads take the interpreter lock every time.
        # next() on itertools.count is atomic under the interpreter lock.
        nonce = (next(self._nonces) & _NONCE_MASK).to_bytes(NONCE, "little")
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes | memoryview, aad: bytes) -> bytes:
        view = memoryview(blob)  # slices of a pack, decrypted without copying them
        if len(view) < self.overhead:
            raise DecryptError("message too short")
        try:
            return self._aead.decrypt(view[:NONCE], view[NONCE:], aad)
        except InvalidTag:
            raise DecryptError("authentication failed") from None


#: Every AEAD object, so that a forked child starts its nonce counters afresh.
_CIPHERS: weakref.WeakSet[AeadCipher] = weakref.WeakSet()


def _reseed_after_fork() -> None:
    for cipher in list(_CIPHERS):
        cipher._reseed()


os.register_at_fork(after_in_child=_reseed_after_fork)


class Keys:
    """The secrets of one store (or none).  `repr` never shows key bytes."""

    def __init__(
        self,
        algorithm: str = "none",
        data_key: bytes | None = None,
        id_key: bytes | None = None,
        gear_seed: int = 0,
    ):
        self.algorithm = algorithm
        self.cipher: Cipher = (
            Cipher() if algorithm == "none" else AeadCipher(algorithm, data_key or b"")
        )
        self._data_key = data_key
        self._id_key = id_key
        self.gear_seed = gear_seed

    def __repr__(self) -> str:
        return f"Keys({self.algorithm!r}, <secret>)"

    @classmethod
    def generate(cls, algorithm: str) -> Keys:
        if algorithm == "none":
            return cls()
        seed = struct.unpack("<Q", os.urandom(8))[0] >> 1
        return cls(algorithm, os.urandom(32), os.urandom(32), seed)

    def hasher(self) -> Any:
        """A BLAKE3 hasher: keyed when encrypted, so digests reveal nothing about content."""
        if self._id_key is None:
            return blake3.blake3(max_threads=1)
        return blake3.blake3(key=self._id_key, max_threads=1)

    def chunk_id(self, data: bytes) -> bytes:
        if self._id_key is None:
            return blake3.blake3(data).digest()
        return blake3.blake3(data, key=self._id_key).digest()

    # -- wrapping ------------------------------------------------------------------------
    def _material(self) -> bytes:
        assert self._data_key is not None and self._id_key is not None
        return self._data_key + self._id_key + struct.pack("<Q", self.gear_seed)

    def wrap(self, secret: bytes, *, keyfile: bool, aad: bytes) -> dict[str, Any]:
        """The wrapped-key record stored in the store's config object."""
        salt = os.urandom(16)
        kdf: dict[str, Any]
        if keyfile:
            kdf = {"kdf": "hkdf-sha256", "salt": b64(salt)}
        else:
            kdf = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64(salt)}
        wrapping = AeadCipher(self.algorithm, derive(kdf, secret))
        return {**kdf, "wrapped": b64(wrapping.encrypt(self._material(), aad))}

    @classmethod
    def unwrap(cls, algorithm: str, record: dict[str, Any], secret: bytes, aad: bytes) -> Keys:
        """Raises DecryptError when `secret` is wrong."""
        wrapping = AeadCipher(algorithm, derive(record, secret))
        material = wrapping.decrypt(unb64(record["wrapped"]), aad)
        if len(material) != 72:
            raise DecryptError("bad key material")
        (seed,) = struct.unpack("<Q", material[64:])
        return cls(algorithm, material[:32], material[32:64], seed)


def derive(record: dict[str, Any], secret: bytes) -> bytes:
    """The 32-byte wrapping key from a passphrase or key file, per the recorded KDF."""
    salt = unb64(record["salt"])
    if record["kdf"] == "scrypt":
        return Scrypt(
            salt=salt, length=32, n=int(record["n"]), r=int(record["r"]), p=int(record["p"])
        ).derive(secret)
    if record["kdf"] == "hkdf-sha256":
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=salt, info=b"tutela content store key file"
        ).derive(secret)
    raise ValueError(f"unknown key derivation {record['kdf']!r}")
