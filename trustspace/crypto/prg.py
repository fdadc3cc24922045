"""AES-128-CTR keystreams (OpenSSL via ``cryptography``) expanded into masks modulo 2^32 or 2^64.

Hazmat tier. A mask is the keystream of AES-128 in counter mode under a 16-byte key, starting at
counter zero, read as little-endian unsigned integers of the vector's width. Every key must be
used for one mask only (trustspace derives a fresh key per pair, session and purpose with HKDF),
which is why the all-zero initial counter block is safe.

Masks are added into an accumulator chunk by chunk: the keystreams of one chunk (64 KiB each,
eight keys at a time) are written into a reused buffer that stays in the CPU cache, summed and
added with numpy's wrap-around unsigned arithmetic, so masking costs little more than
producing the keystream itself.

>>> import numpy as np
>>> acc = np.zeros(5, dtype=np.uint32)
>>> k = bytes(range(16))
>>> apply_masks(acc, add=[k], subtract=[k])
>>> acc.tolist()
[0, 0, 0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trustspace.errors import ConfigError, DataError

__all__ = [
    "CHUNK_BYTES",
    "GROUP",
    "KEY_BYTES",
    "apply_masks",
    "dtype_for",
    "keystream",
    "mask_vector",
]

KEY_BYTES = 16  # AES-128: 128-bit security for the masks, the fastest AES-NI variant
CHUNK_BYTES = 1 << 16  # 64 KiB of each keystream per step
GROUP = 8  # keystreams summed per numpy call: 8 x 64 KiB = 512 KiB stays in a 1 MiB L2 cache
_ZERO_IV = bytes(16)  # safe: every key is fresh and used for one keystream only
_DTYPES: dict[int, type[np.unsignedinteger[Any]]] = {32: np.uint32, 64: np.uint64}


def dtype_for(modulus_bits: int) -> type[np.unsignedinteger[Any]]:
    """Return the numpy dtype of vectors modulo ``2**modulus_bits`` (32 or 64, else ConfigError)."""
    try:
        return _DTYPES[modulus_bits]
    except KeyError:
        raise ConfigError(f"modulus_bits must be 32 or 64, got {modulus_bits}") from None


def _encryptor(key: bytes) -> Any:
    if len(key) != KEY_BYTES:
        raise ConfigError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def keystream(key: bytes, nbytes: int) -> bytes:
    """Return the first ``nbytes`` of the AES-128-CTR keystream under ``key``."""
    return bytes(_encryptor(key).update(bytes(nbytes)))


def mask_vector(key: bytes, length: int, modulus_bits: int) -> np.ndarray[Any, Any]:
    """Return the mask of ``length`` integers modulo ``2**modulus_bits`` derived from ``key``."""
    dtype = dtype_for(modulus_bits)
    return np.frombuffer(keystream(key, length * (modulus_bits // 8)), dtype=dtype).copy()


def apply_masks(
    acc: np.ndarray[Any, Any],
    add: Sequence[bytes] = (),
    subtract: Sequence[bytes] = (),
) -> None:
    """In place, ``acc += sum(mask(k) for k in add) - sum(mask(k) for k in subtract)``.

    ``acc`` must be a contiguous 1-D ``uint32`` or ``uint64`` array; arithmetic wraps modulo
    2^32 or 2^64. Equivalent to adding :func:`mask_vector` for each key, but chunked so the
    keystream never leaves the cache and no full-size temporary is allocated: for each chunk
    of ``acc`` the keystreams of up to :data:`GROUP` keys are written side by side into one
    reused buffer, summed with one numpy reduction and added (or subtracted) once.
    """
    if acc.ndim != 1 or acc.dtype not in (np.uint32, np.uint64) or not acc.flags.c_contiguous:
        raise DataError("apply_masks needs a contiguous 1-D uint32 or uint64 array")
    groups: list[tuple[list[Any], Any]] = []
    for keys, op in ((add, np.add), (subtract, np.subtract)):
        encs = [_encryptor(k) for k in keys]
        groups += [(encs[i : i + GROUP], op) for i in range(0, len(encs), GROUP)]
    if not groups:
        return
    width = acc.dtype.itemsize
    chunk = CHUNK_BYTES // width
    zero = bytes(CHUNK_BYTES)
    # update_into may need up to one block of slack beyond the input length
    buf = bytearray(GROUP * CHUNK_BYTES + 15)
    slots = [memoryview(buf)[j * CHUNK_BYTES : (j + 1) * CHUNK_BYTES + 15] for j in range(GROUP)]
    rows = np.frombuffer(buf, dtype=acc.dtype, count=GROUP * chunk).reshape(GROUP, chunk)
    total = np.empty(chunk, dtype=acc.dtype)
    n = acc.shape[0]
    for start in range(0, n - chunk + 1, chunk):
        part = acc[start : start + chunk]
        for encs, op in groups:
            for enc, slot in zip(encs, slots, strict=False):
                enc.update_into(zero, slot)
            if len(encs) == 1:
                op(part, rows[0], out=part)
            else:
                np.add.reduce(rows[: len(encs)], axis=0, out=total)
                op(part, total, out=part)
    tail = n % chunk
    if tail:
        part = acc[n - tail :]
        for encs, op in groups:
            for enc in encs:
                ks = np.frombuffer(enc.update(bytes(tail * width)), dtype=acc.dtype)
                op(part, ks, out=part)
