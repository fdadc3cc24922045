"""Multi-buffer X25519 (8 lanes, AVX-512 IFMA) from Intel's ``ipp-crypto`` ``crypto_mb`` (hazmat).

``mbx_x25519_mb8`` computes eight independent X25519 products per call, about three times the
throughput of OpenSSL's one-at-a-time X25519 on a CPU with AVX-512 IFMA (SecretFlow libpsi
uses the same library). Loaded with ``ctypes`` from the ``ipp-crypto`` wheel (its runtime
needs ``intel-cmplr-lib-rt``'s ``libsvml``/``libimf``/``libirng``/``libintlc``); ``mb8`` is
``None`` where either is missing, the CPU lacks IFMA or a self-test against ``cryptography``
fails, and ``trustspace.vertical.psi`` then uses OpenSSL. The output is RFC 7748 X25519,
byte for byte (cross-checked in the tests and at load).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np

__all__ = ["mb8"]

_RUNTIME: Final = ("libintlc.so.5", "libimf.so", "libirng.so", "libsvml.so")
_LANES: Final = 8


def _cpu_has_ifma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return " avx512ifma" in flags and " avx512vl" in flags


def _load() -> Callable[[bytes, bytes], tuple[bytes, int]] | None:
    if os.environ.get("TRUSTSPACE_PSI_BACKEND", "") == "openssl" or not _cpu_has_ifma():
        return None
    libdir = Path(sys.prefix) / "lib"
    try:
        for name in _RUNTIME:
            ctypes.CDLL(str(libdir / name), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(libdir / "libcrypto_mb.so"))
        fn = lib.mbx_x25519_mb8
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def run(scalar: bytes, points: bytes) -> tuple[bytes, int]:
        """Products of ``scalar`` with the joined 32-byte u-coordinates, and the index of the
        first all-zero product (a small-order input) or -1."""
        n = len(points) // 32
        if n == 0:
            return b"", -1
        padded = -(-n // _LANES) * _LANES
        src = np.zeros((padded, 32), dtype=np.uint8)
        src[:n] = np.frombuffer(points, dtype=np.uint8).reshape(n, 32)
        src[:n, 31] &= 0x7F  # RFC 7748: the top bit of u is ignored
        src[n:, 0] = 9  # padding lanes: the base point (never returned)
        dst = np.zeros((padded, 32), dtype=np.uint8)
        key = np.frombuffer(scalar, dtype=np.uint8).copy()
        p_src = (src.ctypes.data + 32 * np.arange(padded, dtype=np.uint64)).astype(np.uint64)
        p_dst = (dst.ctypes.data + 32 * np.arange(padded, dtype=np.uint64)).astype(np.uint64)
        p_key = np.full(_LANES, key.ctypes.data, dtype=np.uint64)
        a_src, a_dst, a_key = p_src.ctypes.data, p_dst.ctypes.data, p_key.ctypes.data
        status = 0
        for j in range(0, padded * 8, 64):  # 8 pointers of 8 bytes per call
            status |= fn(a_dst + j, a_key, a_src + j)
        zero = ~dst[:n].any(axis=1)
        if zero.any():
            return b"", int(np.argmax(zero))
        if status:
            raise RuntimeError("mbx_x25519_mb8 failed")
        return dst[:n].tobytes(), -1

    try:  # self-test against OpenSSL before trusting the library
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )

        k = os.urandom(32)
        pts = os.urandom(32 * 11)
        ref = X25519PrivateKey.from_private_bytes(k)
        want = b"".join(
            ref.exchange(X25519PublicKey.from_public_bytes(pts[i : i + 32]))
            for i in range(0, len(pts), 32)
        )
        if run(k, pts) != (want, -1):
            return None
    except (RuntimeError, ValueError):
        return None
    return run


mb8: Final = _load()
"""``mb8(scalar, joined_points) -> (joined_products, first_zero_index_or_-1)``, or ``None``."""
