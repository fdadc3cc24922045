"""Fixed-base windowed exponentiation tables and their bounded per-key cache (Paillier hazmat).

A table for base ``h`` and window ``w`` stores ``h**(d * 2**(w*i)) mod m`` for every row ``i``
and digit ``d < 2**w``; ``h**a`` is then the product of one entry per row, i.e.
``ceil(bits(a) / w)`` modular multiplications and no squaring (Brickell-Gordon-McCurley-Wilson,
EUROCRYPT'92). Window 8 is a byte per digit.

The cache is keyed by the caller and bounded both in entries and in bytes (least recently used
out first), so a node encrypting many values under one analyst key builds its table once.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

import gmpy2
import numpy as np

from trustspace.errors import ConfigError

_ONE: Final = gmpy2.mpz(1)
_MPZ_OVERHEAD_BYTES: Final = 32  # rough size of an mpz object header


class FixedBaseTable:
    """Precomputed powers of one base modulo ``modulus`` for exponents below ``2**exponent_bits``.

    >>> t = FixedBaseTable(3, 1009, exponent_bits=20, window=4)
    >>> t.pow(123_456) == pow(3, 123_456, 1009)
    True
    """

    __slots__ = ("exponent_bits", "modulus", "nbytes", "rows", "window")

    def __init__(self, base: int, modulus: int, exponent_bits: int, window: int) -> None:
        # Bare ValueErrors here and in pow(): the package builds tables only from a validated
        # TableConfig and draws exponents below 2**exponent_bits, so these are its own bugs.
        if not 1 <= window <= 16:  # random_digits draws 16-bit words
            raise ValueError(f"window must be in [1, 16] bits, got {window}")
        if exponent_bits < 1:
            raise ValueError(f"exponent_bits must be positive, got {exponent_bits}")
        m = gmpy2.mpz(modulus)
        g = gmpy2.mpz(base) % m
        size = 1 << window
        nrows = -(-exponent_bits // window)
        rows: list[list[Any]] = []
        for _ in range(nrows):
            row = [_ONE] * size
            acc = _ONE
            for d in range(1, size):
                acc = acc * g % m
                row[d] = acc
            rows.append(row)
            g = acc * g % m  # g ** (2 ** window): base of the next row
        self.modulus = m
        self.window = window
        self.exponent_bits = exponent_bits
        self.rows = rows
        self.nbytes = nrows * size * ((m.bit_length() + 7) // 8 + _MPZ_OVERHEAD_BYTES)

    def digits(self, exponent: int) -> list[int] | bytes:
        """Split ``0 <= exponent < 2**exponent_bits`` into one window digit per row."""
        if self.window == 8:
            return exponent.to_bytes(len(self.rows), "little")
        mask = (1 << self.window) - 1
        w = self.window
        return [(exponent >> (w * i)) & mask for i in range(len(self.rows))]

    def random_digits(self) -> list[int] | bytes:
        """The digits of a fresh uniform exponent in ``[0, 2**exponent_bits)``, from the OS CSPRNG.

        Independent uniform digits are a uniform exponent; drawing digits directly avoids
        splitting a big integer (the last digit is masked to the exponent's remaining bits).
        """
        nrows = len(self.rows)
        top = self.exponent_bits - self.window * (nrows - 1)  # bits of the last digit
        if self.window == 8:
            raw = bytearray(os.urandom(nrows))
            raw[-1] &= (1 << top) - 1
            return bytes(raw)
        words = np.frombuffer(os.urandom(2 * nrows), dtype="<u2") & ((1 << self.window) - 1)
        out: list[int] = words.tolist()
        out[-1] &= (1 << top) - 1
        return out

    def pow_digits(self, digits: list[int] | bytes) -> Any:
        """Return ``base ** sum(d_i * 2**(w*i)) mod modulus`` (one multiplication per row)."""
        rows = self.rows
        m = self.modulus
        acc = rows[0][digits[0]]
        for i in range(1, len(rows)):
            acc = acc * rows[i][digits[i]] % m
        return acc

    def pow(self, exponent: int) -> Any:
        """Return ``base ** exponent mod modulus`` for ``0 <= exponent < 2**exponent_bits``."""
        if not 0 <= exponent < (1 << self.exponent_bits):
            raise ValueError(f"exponent must be in [0, 2**{self.exponent_bits})")
        return self.pow_digits(self.digits(exponent))


def estimate_bytes(modulus_bits: int, exponent_bits: int, window: int, copies: int = 1) -> int:
    """Approximate memory of ``copies`` tables (entries, mpz headers and list slots)."""
    per_entry = (modulus_bits + 7) // 8 + _MPZ_OVERHEAD_BYTES + 8
    return copies * -(-exponent_bits // window) * (1 << window) * per_entry


@functools.lru_cache(maxsize=64)
def choose_window(modulus_bits: int, exponent_bits: int, budget: int, copies: int = 1) -> int:
    """The widest window in [4, 12] whose ``copies`` tables fit ``budget`` bytes (at least 4).

    >>> choose_window(4096, 1024, 80 * 2**20), choose_window(6144, 1536, 80 * 2**20)
    (10, 9)
    """
    best = 4
    for w in range(4, 13):
        if estimate_bytes(modulus_bits, exponent_bits, w, copies) <= budget:
            best = w
    return best


@dataclass(frozen=True)
class TableConfig:
    """Size limits of the precomputation (change with :func:`configure_tables`).

    Attributes:
        window: window bits of public-key tables (entries mod n^2); ``None`` picks the widest
            window whose table fits ``table_budget`` (10 at 2048 bits: ~58 MB, 103
            multiplications per encryption; 9 at 3072 bits: ~71 MB, 171 multiplications).
        crt_window: window bits of the private-key (CRT) tables mod p^2 and q^2 (two tables of
            half-length entries); ``None`` picks by ``table_budget`` likewise.
        table_budget: bytes one key's tables may take when a window is picked automatically.
        max_keys: at most this many tables stay cached (at least 1).
        max_bytes: and at most this many bytes in total, except that the most recently used
            table is always kept (otherwise a too-large table would be rebuilt on every call).
    """

    window: int | None = None
    crt_window: int | None = None
    table_budget: int = 80 * 1024 * 1024  # one key's tables; see the class docstring
    max_keys: int = 8
    max_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("window", "crt_window"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= 16:
                raise ConfigError(f"{name} must be in [1, 16] bits or None (auto), got {v}")
        if self.max_keys < 1 or self.max_bytes < 0 or self.table_budget < 0:
            raise ConfigError("max_keys must be >= 1, max_bytes and table_budget >= 0")

    def public_window(self, modulus_bits: int, exponent_bits: int) -> int:
        """The window for a public-key table mod a ``modulus_bits``-bit n^2."""
        if self.window is not None:
            return self.window
        return choose_window(modulus_bits, exponent_bits, self.table_budget)

    def private_window(self, modulus_bits: int, exponent_bits: int) -> int:
        """The window for the two CRT tables mod ``modulus_bits``-bit p^2 and q^2."""
        if self.crt_window is not None:
            return self.crt_window
        return choose_window(modulus_bits, exponent_bits, self.table_budget, copies=2)


class TableCache:
    """A thread-safe LRU of objects with an ``nbytes`` attribute, bounded by count and bytes."""

    def __init__(self, config: TableConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    @property
    def config(self) -> TableConfig:
        """The current limits."""
        return self._config

    def reconfigure(self, config: TableConfig) -> None:
        """Apply new limits (evicting as needed)."""
        with self._lock:
            self._config = config
            self._evict()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Return the cached object for ``key``, building it (once, under the lock) if absent."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
            item = build()
            self._items[key] = item
            self._evict(keep=key)
            return item

    def get(self, key: Hashable) -> Any:
        """Return the cached object for ``key`` (marking it recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def clear(self) -> None:
        """Drop every cached table."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the cached tables."""
        return sum(int(v.nbytes) for v in self._items.values())

    def _evict(self, keep: Hashable | None = None) -> None:
        cfg = self._config
        total = sum(int(v.nbytes) for v in self._items.values())
        newest = next(reversed(self._items), None) if keep is None else keep
        for k in list(self._items):  # oldest first
            if len(self._items) <= cfg.max_keys and total <= cfg.max_bytes:
                break
            if k != newest:
                total -= int(self._items.pop(k).nbytes)


TABLES: Final = TableCache(TableConfig())
"""The process-wide cache of fixed-base tables."""
