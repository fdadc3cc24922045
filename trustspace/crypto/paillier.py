"""Paillier cryptosystem on gmpy2 (hazmat tier): keys, encryption, encrypted numbers and vectors.

Scheme: g = n + 1, so ``Enc(m) = (1 + m*n) * r**n mod n**2`` and decryption is textbook CRT
decryption; raw ciphertexts are interchangeable with python-paillier (``phe``) under the same n.

Fresh encryptions draw their noise ``r**n`` in the Damgård–Jurik–Nielsen short-exponent form
``h_s**a`` with ``h_s = (-x**2)**n mod n**2`` for a random unit x and a fresh random exponent
``a`` of |n|/2 bits, computed with a fixed-base windowed table (cached per key, bounded, see
:func:`configure_tables`); the private-key holder computes the same thing modulo p**2 and q**2
(CRT). The security argument and its extra assumption are in ``docs/security.md (Paillier)``.

Safe objects: :class:`EncryptedNumber` (ints and floats in one fixed-point context per
``frac_bits``; ``+``, ``-``, ``*`` by plaintext scalar, ``sum()``; lazily re-randomised before it
is serialised) and :class:`EncryptedVector` (packed integer slots). ``raw_*`` methods work on
ints and do none of that.

>>> with _allow_insecure_test_keys():
...     pk, sk = generate_keypair(512)
>>> sk.decrypt(pk.encrypt(12.5) + pk.encrypt(-2))
10.5
>>> sk.decrypt(sum([pk.encrypt(3), pk.encrypt(4), 5]) * -2)
-24
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import gmpy2
import numpy as np
import numpy.typing as npt

from trustspace.crypto import _paillier_pool as _pool
from trustspace.crypto._paillier_fixedbase import (
    TABLES,
    FixedBaseTable,
    TableCache,
    TableConfig,
)
from trustspace.crypto.encoding import (
    DEFAULT_FRAC_BITS,
    Number,
    check_frac_bits,
    decode,
    encode,
    max_int,
    to_python_number,
)
from trustspace.crypto.packing import PackingLayout
from trustspace.errors import ConfigError, DataError, EncodingOverflow, InvalidCiphertext

__all__ = [
    "DEFAULT_HEADROOM",
    "DEFAULT_KEY_BITS",
    "MIN_KEY_BITS",
    "EncryptedNumber",
    "EncryptedVector",
    "PrivateKey",
    "PublicKey",
    "clear_tables",
    "configure_tables",
    "generate_keypair",
    "shutdown_pools",
]

DEFAULT_KEY_BITS: Final = 3072  # 128-bit security, NIST SP 800-57 Part 1 Rev. 5, Table 2
MIN_KEY_BITS: Final = 2048  # 112-bit security, the NIST minimum through 2030
TEST_MIN_KEY_BITS: Final = 128  # floor even under _allow_insecure_test_keys (tests only)
DEFAULT_HEADROOM: Final = 1024  # packed vectors: how many may be summed by default
MIN_SHORT_EXPONENT_BITS: Final = 256  # 2 x 128: Pollard-lambda on a costs 2**(bits/2)
#: A public key's fixed-base table costs about 55 plain exponentiations to build (0.9 s at
#: 3072 bits), so a process builds it only once it has drawn this many noises with the key, or
#: for a batch this large. Before that, the first SMALL_TABLE_AFTER_USES noises are one plain
#: ``powmod`` each (17 ms at 3072 bits) and the next ones use a window-SMALL_TABLE_WINDOW table
#: (about 4 exponentiations to build, 5 MB, 4 ms per noise). A node answering a few
#: ciphertexts per query (or an aggregator re-randomising a sum) then never pays for a table
#: it would not use.
TABLE_AFTER_USES: Final = 64
SMALL_TABLE_AFTER_USES: Final = 4
SMALL_TABLE_WINDOW: Final = 4

_MPZ = gmpy2.mpz
_ONE = gmpy2.mpz(1)
_FP_DOMAIN: Final = b"trustspace/paillier/public-key/v1\x00"
_FP_LEN: Final = 16
_PK_MAGIC: Final = b"TSPK\x01"
_SK_MAGIC: Final = b"TSSK\x01"
_CT_MAGIC: Final = b"TSCT\x01"
_CV_MAGIC: Final = b"TSCV\x01"
_CV_HEADER: Final = struct.Struct(">BHIIQI")  # value_bits, frac_bits, headroom, count, len, ncts

# --------------------------------------------------------------------------- test-only switch

_insecure_lock = threading.Lock()
_insecure_depth = 0


@contextlib.contextmanager
def _allow_insecure_test_keys() -> Iterator[None]:
    """TEST ONLY: allow keys below 2048 bits (down to 128) and short exponents inside the block.

    Small keys are trivially factorable; this switch exists so that tests and doctests run fast.
    It is process-wide and deliberately private; never use it in production code.
    """
    global _insecure_depth
    with _insecure_lock:
        _insecure_depth += 1
    try:
        yield
    finally:
        with _insecure_lock:
            _insecure_depth -= 1


def _insecure_allowed() -> bool:
    return _insecure_depth > 0


def _check_key_bits(bits: int, what: str) -> None:
    floor = TEST_MIN_KEY_BITS if _insecure_allowed() else MIN_KEY_BITS
    if bits < floor:
        raise ConfigError(
            f"{what}: a {bits}-bit Paillier modulus is too small; use at least {MIN_KEY_BITS} "
            f"bits ({DEFAULT_KEY_BITS} recommended, 128-bit security)"
        )


# --------------------------------------------------------------------------- configuration


class _Keep:
    """Sentinel type: leave this setting unchanged."""


_KEEP: Final = _Keep()


def configure_tables(
    *,
    window: int | _Keep | None = _KEEP,
    crt_window: int | _Keep | None = _KEEP,
    table_budget: int | None = None,
    max_keys: int | None = None,
    max_bytes: int | None = None,
) -> TableConfig:
    """Change the size of the fixed-base precomputation and of its per-key cache.

    Args:
        window: window bits of public-key tables; ``None`` (the default setting) picks the
            widest window whose table fits ``table_budget`` (10 at 2048 bits, 9 at 3072).
        crt_window: likewise for the private-key CRT tables (10 at 2048 bits, 9 at 3072).
        table_budget: bytes one key's tables may take under automatic windows (80 MiB).
        max_keys: how many keys' tables stay cached (default 8).
        max_bytes: memory bound of the whole cache (default 512 MiB; the newest table always
            stays).

    Returns:
        The new configuration. Tables already built keep their window until evicted.
    """
    old = TABLES.config
    cfg = TableConfig(
        window=old.window if isinstance(window, _Keep) else window,
        crt_window=old.crt_window if isinstance(crt_window, _Keep) else crt_window,
        table_budget=old.table_budget if table_budget is None else table_budget,
        max_keys=old.max_keys if max_keys is None else max_keys,
        max_bytes=old.max_bytes if max_bytes is None else max_bytes,
    )
    TABLES.reconfigure(cfg)
    return cfg


def clear_tables() -> None:
    """Drop every cached fixed-base table (the private-key ones hold p**2 and q**2)."""
    TABLES.clear()
    _BASES.clear()


def shutdown_pools() -> None:
    """Stop the worker processes kept by ``encrypt_many``/``decrypt_many`` (also done at exit)."""
    _pool.shutdown_pools()


def _short_exponent_bits(n_bits: int) -> int:
    return max(n_bits // 2, 1 if _insecure_allowed() else MIN_SHORT_EXPONENT_BITS)


def _random_unit(n: Any) -> Any:
    while True:
        x = _MPZ(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            return x


def _djn_base(n: Any, nsq: Any) -> Any:
    """Return ``h_s = (-x**2)**n mod n**2`` for a fresh random unit x (DJN'10, section 4.2)."""
    x = _random_unit(n)
    h = (-(x * x)) % n
    return gmpy2.powmod(h, n, nsq)


class _PublicBase:
    """The DJN base ``h_s`` this process drew for one public key, how often it was used, and
    its small-window table once that pays (see TABLE_AFTER_USES)."""

    __slots__ = ("_lock", "hs", "nbytes", "small", "uses")

    def __init__(self, n: Any, nsq: Any) -> None:
        self.hs = _djn_base(n, nsq)
        self.uses = 0
        self.small: FixedBaseTable | None = None
        self.nbytes = (int(nsq.bit_length()) + 7) // 8 + 64
        self._lock = threading.Lock()

    def small_table(self, nsq: Any, exponent_bits: int) -> FixedBaseTable:
        with self._lock:
            if self.small is None or self.small.exponent_bits != exponent_bits:
                self.small = FixedBaseTable(self.hs, nsq, exponent_bits, SMALL_TABLE_WINDOW)
                self.nbytes = (int(nsq.bit_length()) + 7) // 8 + 64 + self.small.nbytes
            return self.small


_BASES: Final = TableCache(TableConfig(max_keys=64, max_bytes=64 * 1024 * 1024))
"""Per-key DJN bases and small tables (public data), shared by a key's tables."""


class _CrtNoise:
    """DJN noise tables modulo p**2 and q**2 of one private key, plus the CRT recombination."""

    __slots__ = ("nbytes", "psq", "qsq", "qsq_inv", "tp", "tq")

    def __init__(self, n: Any, p: Any, q: Any, exponent_bits: int, window: int) -> None:
        nsq = n * n
        hs = _djn_base(n, nsq)
        self.psq = p * p
        self.qsq = q * q
        self.qsq_inv = gmpy2.invert(self.qsq, self.psq)
        self.tp = FixedBaseTable(hs % self.psq, self.psq, exponent_bits, window)
        self.tq = FixedBaseTable(hs % self.qsq, self.qsq, exponent_bits, window)
        self.nbytes = self.tp.nbytes + self.tq.nbytes

    def noise(self) -> Any:
        tp = self.tp
        d = tp.random_digits()  # a fresh exponent a for every ciphertext, never reused
        rp = tp.pow_digits(d)
        rq = self.tq.pow_digits(d)
        return rq + self.qsq * ((rp - rq) * self.qsq_inv % self.psq)


# --------------------------------------------------------------------------- keys


class _Encryptor:
    """Encryption methods shared by :class:`PublicKey` and :class:`PrivateKey` (the latter uses
    the faster CRT noise)."""

    __slots__ = ()

    @property
    def public_key(self) -> PublicKey:  # pragma: no cover - overridden
        raise NotImplementedError

    def _noise(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _warm(self) -> None:
        """Build (or fetch) the fixed-base table now instead of on the first encryption."""
        self._noise()

    def _raw_encrypt_fresh(self, m: Any) -> Any:
        pk = self.public_key
        return (1 + m * pk.n) * self._noise() % pk.nsq

    def raw_encrypt(self, plaintext: int, r_value: int | None = None) -> int:
        """Encrypt an integer ``0 <= plaintext < n`` (textbook, phe-compatible ciphertext).

        Args:
            plaintext: the already-encoded message.
            r_value: TEST ONLY: a fixed unit ``r`` for the textbook ``(1+mn) r**n mod n**2``
                (known-answer tests). By default the noise is a fresh DJN ``h_s**a``.

        Returns:
            The ciphertext, an int in ``(0, n**2)``.

        Raises:
            TypeError: if ``plaintext`` is not an int. DataError: if it is out of range.
            ConfigError: if ``r_value`` is not a unit.
        """
        pk = self.public_key
        if isinstance(plaintext, bool) or not isinstance(plaintext, int | type(_ONE)):
            raise TypeError(f"raw_encrypt expects an int plaintext, got {type(plaintext).__name__}")
        if not 0 <= plaintext < pk.n:
            raise DataError("raw_encrypt plaintext must be in [0, n); encode negatives first")
        m = _MPZ(plaintext)
        if r_value is None:
            return int(self._raw_encrypt_fresh(m))
        r = _MPZ(r_value)
        if not 0 < r < pk.n or gmpy2.gcd(r, pk.n) != 1:
            raise ConfigError("r_value must be a unit in (0, n)")
        return int((1 + m * pk.n) * gmpy2.powmod(r, pk.n, pk.nsq) % pk.nsq)

    def encrypt(self, value: object, frac_bits: int | None = None) -> EncryptedNumber:
        """Encrypt an int, float or numpy scalar (negatives included).

        Args:
            value: the number.
            frac_bits: the fixed-point context: values are stored as ``round(value *
                2**frac_bits)``. Default: 0 (exact) for ints, ``DEFAULT_FRAC_BITS`` (52) for
                floats. Encrypt everything that will be added together with one ``frac_bits``
                so that additions never need a modular exponentiation.

        Returns:
            A fresh, re-randomised :class:`EncryptedNumber`.

        Raises:
            EncodingOverflow: if the scaled value does not fit in ``n/3``.
            TypeError, DataError: for non-numbers, NaN and infinities.
            ConfigError: for a ``frac_bits`` outside ``[0, MAX_FRAC_BITS]``.
        """
        pk = self.public_key
        v = to_python_number(value)
        f = _context_frac_bits([v], frac_bits)
        m = _MPZ(encode(v, f, int(pk.n)))
        return _wrap(pk, self._raw_encrypt_fresh(m), f, True)

    def encrypt_many(
        self, values: Iterable[object], frac_bits: int | None = None, processes: int | None = None
    ) -> list[EncryptedNumber]:
        """Encrypt many numbers in one encoding context, in parallel by default.

        Args:
            values: ints, floats or numpy scalars (a numpy array is fine).
            frac_bits: one context for all values (default: 0 if all are ints, else 52).
            processes: worker processes; ``None`` uses every available core for batches of at
                least ``PARALLEL_MIN_ITEMS`` values, ``1`` stays in this process. Workers are
                started once per key and reused (:func:`shutdown_pools` stops them). They are
                started with ``forkserver``, so a script calling this needs the usual
                ``if __name__ == "__main__":`` guard.

        Returns:
            One :class:`EncryptedNumber` per value, in order.
        """
        pk = self.public_key
        vs = _as_numbers(values)
        f = _context_frac_bits(vs, frac_bits)
        n = int(pk.n)
        ms = [encode(v, f, n) for v in vs]
        return [_wrap(pk, _MPZ(c), f, True) for c in self._raw_encrypt_batch(ms, processes)]

    def _raw_encrypt_batch(self, ms: list[int], processes: int | None) -> list[Any]:
        procs = _pool.choose_processes(len(ms), processes)
        if procs > 1:
            return _pool.run(self, "encrypt", ms, procs)
        if len(ms) >= TABLE_AFTER_USES:
            self._warm()  # the table pays for itself within this batch
        return [self._raw_encrypt_fresh(_MPZ(m)) for m in ms]

    def encrypt_vector(
        self,
        values: npt.ArrayLike,
        *,
        value_bits: int = 32,
        headroom: int = DEFAULT_HEADROOM,
        frac_bits: int | None = None,
        processes: int | None = None,
    ) -> EncryptedVector:
        """Encrypt a numpy vector packed into as few ciphertexts as possible.

        Args:
            values: a 1-d array of ints (or floats, with ``frac_bits``).
            value_bits: every (scaled) value must lie in ``[-2**(value_bits-1),
                2**(value_bits-1))``.
            headroom: the declared maximum number of such vectors that will be summed
                (e.g. the number of parties); summing more is refused.
            frac_bits: fixed-point scale for float arrays (required for floats: it trades range
                against precision within ``value_bits``); must be 0 or None for ints.
            processes: as for :meth:`encrypt_many`.

        Returns:
            An :class:`EncryptedVector`.

        Raises:
            EncodingOverflow: naming the first value that does not fit ``value_bits``.
            ConfigError: for impossible layouts or a missing or bad ``frac_bits``.
            DataError, TypeError: for arrays that are not 1-d, not numeric or not finite.
        """
        pk = self.public_key
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise DataError(f"encrypt_vector expects a 1-d array, got shape {arr.shape}")
        f, ints = _vector_to_ints(arr, frac_bits)
        layout = PackingLayout.for_key(pk.bits, value_bits, headroom)
        plaintexts = layout.pack(ints)
        cts = self._raw_encrypt_batch(plaintexts, processes)
        return EncryptedVector._make(pk, cts, layout, f, int(arr.size), 1, True)


class PublicKey(_Encryptor):
    """A Paillier public key ``n`` (g = n + 1).

    Args:
        n: the modulus: odd, at least 2048 bits (3072 recommended).

    Raises:
        ConfigError: if n is too small or even. TypeError: if n is not an int.
    """

    __slots__ = ("_fingerprint", "bits", "max_int", "n", "nsq")

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int | type(_ONE)):
            raise TypeError(f"PublicKey(n) expects an int, got {type(n).__name__}")
        n_ = _MPZ(n)
        if n_ < 3 or n_ % 2 == 0:
            raise ConfigError("PublicKey(n): n must be an odd integer > 2")
        bits = int(n_.bit_length())
        _check_key_bits(bits, "PublicKey(n)")
        self.n = n_
        self.nsq = n_ * n_
        self.bits = bits
        self.max_int = max_int(int(n_))
        digest = hashlib.sha256(_FP_DOMAIN + int(n_).to_bytes((bits + 7) // 8, "big")).digest()
        self._fingerprint = digest[:_FP_LEN]

    @property
    def public_key(self) -> PublicKey:
        """This key (so that code can treat public and private keys alike)."""
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, fingerprint={self.fingerprint[:16]}…)"

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the domain-separated modulus, truncated to 128 bits: a stable key id."""
        return self._fingerprint.hex()

    @property
    def ciphertext_length(self) -> int:
        """Length in bytes of a serialised raw ciphertext (fixed: bytes of n**2)."""
        return (int(self.nsq.bit_length()) + 7) // 8

    @property
    def short_exponent_bits(self) -> int:
        """Bit length of the DJN exponent ``a`` (|n|/2)."""
        return _short_exponent_bits(self.bits)

    def _base(self) -> _PublicBase:
        n, nsq = self.n, self.nsq
        base: _PublicBase = _BASES.get_or_build(self._fingerprint, lambda: _PublicBase(n, nsq))
        return base

    def _table_key(self) -> tuple[Any, ...]:
        ebits = self.short_exponent_bits
        window = TABLES.config.public_window(int(self.nsq.bit_length()), ebits)
        return ("pk", self._fingerprint, window, ebits)

    def _table(self) -> FixedBaseTable:
        key = self._table_key()
        table: FixedBaseTable | None = TABLES.get(key)
        if table is not None:
            return table
        hs, nsq = self._base().hs, self.nsq
        _, _, window, ebits = key
        table = TABLES.get_or_build(key, lambda: FixedBaseTable(hs, nsq, ebits, window))
        return table

    def _warm(self) -> None:
        """Build (or fetch) the fixed-base table now instead of after ``TABLE_AFTER_USES``."""
        self._table()

    def _noise(self) -> Any:
        # h_s ** a for a fresh a of short_exponent_bits bits from the OS CSPRNG, never reused:
        # with the key's table once it pays (see TABLE_AFTER_USES), by one powmod before that
        t: FixedBaseTable | None = TABLES.get(self._table_key())
        if t is None:
            base = self._base()
            base.uses += 1  # a lost update under threads only delays a build a little
            ebits = self.short_exponent_bits
            if base.uses > TABLE_AFTER_USES:
                t = self._table()
            elif base.uses > SMALL_TABLE_AFTER_USES:
                t = base.small_table(self.nsq, ebits)
            else:
                return gmpy2.powmod(base.hs, secrets.randbits(ebits), self.nsq)
        return t.pow_digits(t.random_digits())

    def validate_ciphertext(self, c: int) -> Any:
        """Check that ``c`` is a valid ciphertext under this key and return it as an mpz.

        Raises:
            InvalidCiphertext: if not ``0 < c < n**2`` or ``gcd(c, n) != 1``.
        """
        if isinstance(c, bool) or not isinstance(c, int | type(_ONE)):
            raise InvalidCiphertext(f"a ciphertext must be an int, got {type(c).__name__}")
        c_ = _MPZ(c)
        if not 0 < c_ < self.nsq:
            raise InvalidCiphertext(
                "ciphertext is outside (0, n**2) for this public key: it is corrupted or was "
                f"made under another key (this key: {self.fingerprint})"
            )
        if gmpy2.gcd(c_, self.n) != 1:
            raise InvalidCiphertext(
                "ciphertext is not a unit modulo n**2 (gcd(c, n) != 1): it is corrupted or was "
                f"made under another key (this key: {self.fingerprint})"
            )
        return c_

    def ciphertext_to_bytes(self, c: int) -> bytes:
        """Fixed-length big-endian encoding of a raw ciphertext (``ciphertext_length`` bytes)."""
        return int(c).to_bytes(self.ciphertext_length, "big")

    def ciphertext_from_bytes(self, data: bytes) -> int:
        """Parse and validate a raw ciphertext written by :meth:`ciphertext_to_bytes`.

        Raises:
            InvalidCiphertext: wrong length, out of range or not a unit.
        """
        if len(data) != self.ciphertext_length:
            raise InvalidCiphertext(
                f"raw ciphertext has {len(data)} bytes, this key's have {self.ciphertext_length}"
                f" (key {self.fingerprint}); it was made under another key size"
            )
        return int(self.validate_ciphertext(int.from_bytes(data, "big")))

    def to_bytes(self) -> bytes:
        """Serialise: ``b"TSPK\\x01" || len(n) (u16) || n`` big-endian."""
        nb = int(self.n).to_bytes((self.bits + 7) // 8, "big")
        return _PK_MAGIC + struct.pack(">H", len(nb)) + nb

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """Parse :meth:`to_bytes` output.

        Raises:
            DataError: if the bytes are not a trustspace Paillier public key.
            ConfigError: if the key they hold is invalid (see :class:`PublicKey`).
        """
        body = _take_magic(data, _PK_MAGIC, "public key")
        n, rest = _take_int(body, "public key")
        if rest:
            raise DataError("public key bytes have trailing data")
        return cls(n)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_bytes` to ``path`` (world-readable is fine for a public key)."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a public key written by :meth:`write`."""
        return cls.from_bytes(Path(path).read_bytes())


class PrivateKey(_Encryptor):
    """A Paillier private key: the primes of ``public_key.n``, with CRT decryption constants.

    Args:
        public_key: the matching :class:`PublicKey`.
        p, q: distinct primes of equal bit length with ``p * q == n``.

    Raises:
        ConfigError: if the primes do not match the key or are not distinct equal-length primes.
    """

    __slots__ = ("_pk", "hp", "hq", "p", "p_inv_q", "psq", "q", "qsq")

    def __init__(self, public_key: PublicKey, p: int, q: int) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError("PrivateKey(public_key, p, q): public_key must be a PublicKey")
        p_, q_ = _MPZ(p), _MPZ(q)
        if p_ * q_ != public_key.n:
            raise ConfigError("PrivateKey: p * q does not equal the public key's n")
        if p_ == q_:
            raise ConfigError("PrivateKey: p and q must be different primes")
        if p_.bit_length() != q_.bit_length():
            raise ConfigError("PrivateKey: p and q must have the same bit length")
        if not (gmpy2.is_prime(p_, 25) and gmpy2.is_prime(q_, 25)):
            raise ConfigError("PrivateKey: p and q must be primes")
        self._pk = public_key
        self.p, self.q = p_, q_
        self.psq, self.qsq = p_ * p_, q_ * q_
        self.p_inv_q = gmpy2.invert(p_, q_)
        self.hp = _h_function(p_, self.psq, public_key.n)
        self.hq = _h_function(q_, self.qsq, public_key.n)

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._pk

    def __repr__(self) -> str:  # never print the primes
        return f"PrivateKey(bits={self._pk.bits}, fingerprint={self._pk.fingerprint[:16]}…)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and self.p == other.p and self.q == other.q

    def __hash__(self) -> int:
        return hash(self._pk)

    def _crt(self) -> _CrtNoise:
        pk = self._pk
        ebits = pk.short_exponent_bits
        window = TABLES.config.private_window(int(self.psq.bit_length()), ebits)
        p, q = self.p, self.q

        def build() -> _CrtNoise:
            return _CrtNoise(pk.n, p, q, ebits, window)

        crt: _CrtNoise = TABLES.get_or_build(("sk", pk._fingerprint, window, ebits), build)
        return crt

    def _noise(self) -> Any:
        return self._crt().noise()

    def _raw_decrypt(self, c: Any) -> Any:
        p, q, psq, qsq = self.p, self.q, self.psq, self.qsq
        # reducing the base first is ~10% faster than letting powmod do it
        mp = (gmpy2.powmod(c % psq, p - 1, psq) - 1) // p * self.hp % p
        mq = (gmpy2.powmod(c % qsq, q - 1, qsq) - 1) // q * self.hq % q
        return mp + p * ((mq - mp) * self.p_inv_q % q)

    def raw_decrypt(self, ciphertext: int) -> int:
        """Textbook CRT decryption of a raw ciphertext (ours or phe's under the same n).

        Returns:
            The plaintext in ``[0, n)``.

        Raises:
            InvalidCiphertext: if the ciphertext is not in ``(0, n**2)``.
        """
        if isinstance(ciphertext, bool) or not isinstance(ciphertext, int | type(_ONE)):
            raise InvalidCiphertext(f"a ciphertext must be an int, got {type(ciphertext).__name__}")
        c = _MPZ(ciphertext)
        if not 0 < c < self._pk.nsq:
            raise InvalidCiphertext("ciphertext is outside (0, n**2) for this key")
        return int(self._raw_decrypt(c))

    def _check_owner(self, pk: PublicKey) -> None:
        if pk is not self._pk and pk.n != self._pk.n:
            raise InvalidCiphertext(
                f"ciphertext was encrypted under key {pk.fingerprint}, but this private key "
                f"belongs to {self._pk.fingerprint}; decrypt it with the matching key"
            )

    def decrypt(self, encrypted: EncryptedNumber) -> Number:
        """Decrypt an :class:`EncryptedNumber` to an int (``frac_bits == 0``) or a float.

        Raises:
            InvalidCiphertext: if it was encrypted under another key.
            EncodingOverflow: if the plaintext lies outside the encodable range (an overflowed
                sum); never wraps silently.
        """
        if not isinstance(encrypted, EncryptedNumber):
            raise TypeError(f"decrypt expects an EncryptedNumber, got {type(encrypted).__name__}")
        self._check_owner(encrypted.public_key)
        m = self._raw_decrypt(encrypted._c)
        return decode(m, encrypted.frac_bits, int(self._pk.n))

    def decrypt_many(
        self, encrypted: Sequence[EncryptedNumber], processes: int | None = None
    ) -> list[Number]:
        """Decrypt many numbers, in parallel by default (see :meth:`encrypt_many`).

        Raises:
            as :meth:`decrypt`.
        """
        items = list(encrypted)
        for e in items:
            if not isinstance(e, EncryptedNumber):
                raise TypeError(f"decrypt_many expects EncryptedNumbers, got {type(e).__name__}")
            self._check_owner(e.public_key)
        ms = self._raw_decrypt_batch([e._c for e in items], processes)
        n = int(self._pk.n)
        return [decode(m, e.frac_bits, n) for m, e in zip(ms, items, strict=True)]

    def _raw_decrypt_batch(self, cs: list[Any], processes: int | None) -> list[Any]:
        procs = _pool.choose_processes(len(cs), processes)
        if procs > 1:
            return _pool.run(self, "decrypt", [int(c) for c in cs], procs)
        return [self._raw_decrypt(c) for c in cs]

    def decrypt_vector(
        self, vector: EncryptedVector, processes: int | None = None
    ) -> npt.NDArray[Any]:
        """Decrypt an :class:`EncryptedVector` (a single one or a sum of several).

        Args:
            vector: the encrypted vector.
            processes: as for :meth:`decrypt_many` (``None``: all cores for vectors of at
                least ``PARALLEL_MIN_ITEMS`` ciphertexts, else in this process).

        Returns:
            An int64 array (``frac_bits == 0``) or a float64 array.

        Raises:
            InvalidCiphertext: under another key, or slots that no valid sum can produce.
        """
        if not isinstance(vector, EncryptedVector):
            raise TypeError(
                f"decrypt_vector expects an EncryptedVector, got {type(vector).__name__}"
            )
        self._check_owner(vector.public_key)
        ms = self._raw_decrypt_batch(vector._cts, processes)
        ints = vector.layout.unpack(ms, vector.length, vector.count)
        if vector.frac_bits == 0:
            return ints
        out: npt.NDArray[np.float64] = np.ldexp(ints.astype(np.float64), -vector.frac_bits)
        return out

    # ---------------------------------------------------------------- serialisation

    def to_bytes(self) -> bytes:
        """Serialise: ``b"TSSK\\x01" || len(p) || p || len(q) || q`` (big-endian). SECRET."""
        out = [_SK_MAGIC]
        for v in (self.p, self.q):
            b = int(v).to_bytes((int(v.bit_length()) + 7) // 8, "big")
            out += [struct.pack(">H", len(b)), b]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateKey:
        """Parse :meth:`to_bytes` output (re-derives and checks the public key).

        Raises:
            DataError: if the bytes are not a trustspace Paillier private key.
            ConfigError: if the primes they hold are invalid (see :class:`PrivateKey`).
        """
        body = _take_magic(data, _SK_MAGIC, "private key")
        p, body = _take_int(body, "private key")
        q, body = _take_int(body, "private key")
        if body:
            raise DataError("private key bytes have trailing data")
        return cls(PublicKey(p * q), p, q)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the private key to ``path`` with permissions 0600 (created or truncated)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also tighten a pre-existing file
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(self.to_bytes())
        finally:
            os.close(fd)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Read a private key written by :meth:`write`.

        Raises:
            ConfigError: if the file is readable by group or others (fix: ``chmod 600``).
        """
        mode = os.stat(path).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"private key file {os.fspath(path)!r} has permissions {stat.filemode(mode)}; "
                f"it must be private: run `chmod 600 {os.fspath(path)}`"
            )
        return cls.from_bytes(Path(path).read_bytes())


def _h_function(x: Any, xsq: Any, n: Any) -> Any:
    """``hp = L_p((n+1)**(p-1) mod p**2)**-1 mod p`` (Paillier'99, CRT decryption)."""
    g = n + 1
    return gmpy2.invert((gmpy2.powmod(g, x - 1, xsq) - 1) // x, x)


# --------------------------------------------------------------------------- key generation


def _random_prime(bits: int) -> Any:
    """A random prime of exactly ``bits`` bits, top two bits set, ≡ 3 mod 4."""
    while True:
        x = _MPZ(secrets.randbits(bits)) | (_MPZ(3) << (bits - 2)) | 3
        limit = _ONE << bits
        while x < limit:
            if gmpy2.is_prime(x, 1) and gmpy2.is_bpsw_prp(x) and gmpy2.is_prime(x, 30):
                return x
            x += 4


def generate_keypair(bits: int = DEFAULT_KEY_BITS) -> tuple[PublicKey, PrivateKey]:
    """Generate a Paillier key pair with an n of exactly ``bits`` bits.

    The primes p, q are random, distinct, of ``bits/2`` bits each (top two bits set, so that n
    has exactly ``bits`` bits), ``p ≡ q ≡ 3 (mod 4)`` and ``gcd(p-1, q-1) == 2`` (the conditions
    of the DJN short-exponent encryption), ``|p - q| > 2**(bits/2 - 100)`` (FIPS 186-5, against
    Fermat factoring); ``gcd(n, φ(n)) == 1`` follows from equal lengths.

    Args:
        bits: modulus size, even, at least 2048 (default 3072: 128-bit security).

    Returns:
        ``(public_key, private_key)``.

    Raises:
        ConfigError: if ``bits`` is too small or odd.
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    _check_key_bits(bits, "generate_keypair(bits)")
    if bits % 2:
        raise ConfigError(f"generate_keypair(bits): bits must be even, got {bits}")
    half = bits // 2
    while True:
        p = _random_prime(half)
        q = _random_prime(half)
        if p == q or gmpy2.gcd(p - 1, q - 1) != 2:
            continue
        if abs(p - q).bit_length() <= max(half - 100, half // 2):
            continue
        n = p * q
        if n.bit_length() != bits:  # pragma: no cover - impossible with the top two bits set
            continue
        pk = PublicKey(n)
        return pk, PrivateKey(pk, p, q)


# --------------------------------------------------------------------------- encrypted numbers


def _context_frac_bits(values: Sequence[Number], frac_bits: int | None) -> int:
    if frac_bits is not None:
        return check_frac_bits(frac_bits)
    return 0 if all(isinstance(v, int) for v in values) else DEFAULT_FRAC_BITS


def _as_numbers(values: Iterable[object]) -> list[Number]:
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise TypeError(f"cannot encrypt an array of dtype {values.dtype}")
        return [to_python_number(v) for v in values.reshape(-1).tolist()]
    return [to_python_number(v) for v in values]


def _vector_to_ints(arr: npt.NDArray[Any], frac_bits: int | None) -> tuple[int, npt.NDArray[Any]]:
    if arr.dtype.kind in "iu":
        f = 0 if frac_bits is None else check_frac_bits(frac_bits)
        if f == 0:
            return 0, arr
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "f":
        if frac_bits is None:
            raise ConfigError(
                "encrypt_vector of floats needs an explicit frac_bits (fixed-point scale): the "
                "scaled values must fit value_bits, so choose e.g. frac_bits=16 for |x| < 2**15 "
                "with value_bits=32"
            )
        f = check_frac_bits(frac_bits)
    else:
        raise TypeError(f"encrypt_vector expects an int or float array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DataError(f"cannot encrypt non-finite value {arr[i]} at index {i}")
    scaled = np.rint(np.ldexp(arr, f))
    if arr.size and float(np.max(np.abs(scaled))) >= 2.0**62:
        raise EncodingOverflow(f"float vector scaled by 2**{f} exceeds 2**62; lower frac_bits")
    return f, scaled.astype(np.int64)


def _wrap(pk: PublicKey, c: Any, frac_bits: int, secure: bool) -> EncryptedNumber:
    e = object.__new__(EncryptedNumber)
    e.public_key = pk
    e._c = c
    e.frac_bits = frac_bits
    e._secure = secure
    return e


def _scalar_exponent(value: object) -> tuple[int, int]:
    """A plaintext multiplier as ``(integer, frac_bits)``, exact (floats are dyadic)."""
    v = to_python_number(value)
    if isinstance(v, int):
        return v, 0
    num, den = v.as_integer_ratio()
    return num, den.bit_length() - 1


class EncryptedNumber:
    """An encrypted int or float under a :class:`PublicKey`, in fixed-point context ``frac_bits``.

    Supports ``+``/``-`` with another EncryptedNumber or a plaintext number, ``*`` and ``/`` by
    a plaintext number, unary ``-`` and ``sum()``. Results of operations are re-randomised
    lazily, when their ciphertext is read with ``be_secure=True`` or serialised.

    Args:
        public_key: the key it is encrypted under.
        ciphertext: a raw ciphertext (validated: ``0 < c < n**2``, a unit).
        frac_bits: its fixed-point scale.

    Raises:
        InvalidCiphertext: if ``ciphertext`` is invalid for ``public_key``.
    """

    __slots__ = ("_c", "_secure", "frac_bits", "public_key")

    public_key: PublicKey
    frac_bits: int
    _c: Any
    _secure: bool

    def __init__(self, public_key: PublicKey, ciphertext: int, frac_bits: int = 0) -> None:
        self.public_key = public_key
        self._c = public_key.validate_ciphertext(ciphertext)
        self.frac_bits = check_frac_bits(frac_bits)
        self._secure = False

    def __repr__(self) -> str:
        return f"<EncryptedNumber frac_bits={self.frac_bits} key={self.public_key.fingerprint[:8]}>"

    # ---------------------------------------------------------------- ciphertext access

    def ciphertext(self, be_secure: bool = True) -> int:
        """The raw ciphertext; re-randomised first (once) if ``be_secure`` and not fresh."""
        if be_secure and not self._secure:
            self.obfuscate()
        return int(self._c)

    def obfuscate(self) -> None:
        """Multiply in fresh encryption noise so the ciphertext reveals nothing of its history."""
        pk = self.public_key
        self._c = self._c * pk._noise() % pk.nsq
        self._secure = True

    @property
    def is_rerandomised(self) -> bool:
        """Whether the ciphertext already carries fresh noise (no re-randomisation pending)."""
        return self._secure

    def to_bytes(self) -> bytes:
        """Serialise (re-randomising first): ``b"TSCT\\x01" || key fingerprint (16) ||
        frac_bits (u16) || c`` with c fixed-length big-endian."""
        pk = self.public_key
        c = self.ciphertext(be_secure=True)
        return (
            _CT_MAGIC
            + pk._fingerprint
            + struct.pack(">H", self.frac_bits)
            + (c.to_bytes(pk.ciphertext_length, "big"))
        )

    @classmethod
    def from_bytes(cls, public_key: PublicKey, data: bytes) -> EncryptedNumber:
        """Parse and validate :meth:`to_bytes` output under ``public_key``.

        Raises:
            InvalidCiphertext: malformed, made under another key (fingerprint mismatch), out of
                range or not a unit.
        """
        body = _take_magic(data, _CT_MAGIC, "ciphertext", InvalidCiphertext)
        body = _check_fingerprint(public_key, body)
        if len(body) != 2 + public_key.ciphertext_length:
            raise InvalidCiphertext(
                f"ciphertext has {len(body) - 2} bytes, expected {public_key.ciphertext_length} "
                f"for key {public_key.fingerprint}"
            )
        (frac_bits,) = struct.unpack(">H", body[:2])
        c = int.from_bytes(body[2:], "big")
        e = cls(public_key, c, frac_bits)
        e._secure = True  # it was re-randomised by its sender
        return e

    # ---------------------------------------------------------------- arithmetic

    def _rescaled(self, frac_bits: int) -> EncryptedNumber:
        """The same value at a larger scale (costs one small modular exponentiation)."""
        pk = self.public_key
        c = gmpy2.powmod(self._c, _ONE << (frac_bits - self.frac_bits), pk.nsq)
        return _wrap(pk, c, frac_bits, False)

    def __add__(self, other: object) -> EncryptedNumber:
        if type(other) is EncryptedNumber:
            pk = self.public_key
            if other.public_key is not pk and other.public_key.n != pk.n:
                raise InvalidCiphertext(
                    f"cannot add numbers encrypted under different keys ({pk.fingerprint} and "
                    f"{other.public_key.fingerprint})"
                )
            a, b = self, other
            if a.frac_bits != b.frac_bits:
                f = max(a.frac_bits, b.frac_bits)
                a, b = (
                    (a._rescaled(f) if a.frac_bits < f else a),
                    (b._rescaled(f) if b.frac_bits < f else b),
                )
            return _wrap(pk, a._c * b._c % pk.nsq, a.frac_bits, False)
        if type(other) is int and other == 0:  # sum() starts from 0
            return _wrap(self.public_key, self._c, self.frac_bits, self._secure)
        return self._add_plain(other)

    def __radd__(self, other: object) -> EncryptedNumber:
        return self.__add__(other)

    def _add_plain(self, other: object) -> EncryptedNumber:
        if isinstance(other, EncryptedVector):
            raise TypeError("cannot add an EncryptedVector to an EncryptedNumber")
        v = to_python_number(other)
        a = self
        if isinstance(v, float) and a.frac_bits == 0:
            a = a._rescaled(DEFAULT_FRAC_BITS)
        pk = a.public_key
        m = _MPZ(encode(v, a.frac_bits, int(pk.n)))
        # adding a plaintext keeps the noise of `a`, so a re-randomised input stays so
        return _wrap(pk, a._c * (1 + m * pk.n) % pk.nsq, a.frac_bits, a._secure)

    def __neg__(self) -> EncryptedNumber:
        pk = self.public_key
        return _wrap(pk, gmpy2.invert(self._c, pk.nsq), self.frac_bits, self._secure)

    def __sub__(self, other: object) -> EncryptedNumber:
        if isinstance(other, EncryptedNumber):
            return self + (-other)
        return self + (-to_python_number(other))

    def __rsub__(self, other: object) -> EncryptedNumber:
        return (-self) + other

    def __mul__(self, other: object) -> EncryptedNumber:
        if isinstance(other, EncryptedNumber | EncryptedVector):
            raise TypeError("Paillier cannot multiply two ciphertexts; multiply by a plaintext")
        k, f = _scalar_exponent(other)
        pk = self.public_key
        if abs(k) > pk.max_int:
            raise EncodingOverflow(f"scalar {other!r} is too large for this key")
        c = gmpy2.powmod(self._c, k, pk.nsq)  # a negative k uses the inverse (c is a unit)
        return _wrap(pk, c, check_frac_bits(self.frac_bits + f), False)

    def __rmul__(self, other: object) -> EncryptedNumber:
        return self.__mul__(other)

    def __truediv__(self, other: object) -> EncryptedNumber:
        v = to_python_number(other)
        if v == 0:
            raise ZeroDivisionError("division of an EncryptedNumber by zero")
        return self * (1 / v)


# --------------------------------------------------------------------------- encrypted vectors


class EncryptedVector:
    """A packed, encrypted vector (or the slot-wise sum of several) under one public key.

    Add vectors with ``+`` or ``sum()``; the sum of more than the declared ``headroom`` vectors
    is refused (:class:`~trustspace.errors.EncodingOverflow`), never wrapped.
    """

    __slots__ = ("_cts", "_secure", "count", "frac_bits", "layout", "length", "public_key")

    public_key: PublicKey
    layout: PackingLayout
    frac_bits: int
    length: int
    count: int
    _cts: list[Any]
    _secure: bool

    @classmethod
    def _make(
        cls,
        pk: PublicKey,
        cts: list[Any],
        layout: PackingLayout,
        frac_bits: int,
        length: int,
        count: int,
        secure: bool,
    ) -> EncryptedVector:
        v = object.__new__(cls)
        v.public_key, v._cts, v.layout, v.frac_bits = pk, cts, layout, frac_bits
        v.length, v.count, v._secure = length, count, secure
        return v

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"<EncryptedVector length={self.length} count={self.count}/{self.layout.headroom} "
            f"ciphertexts={len(self._cts)} key={self.public_key.fingerprint[:8]}>"
        )

    @property
    def headroom(self) -> int:
        """The declared maximum number of vectors in a sum."""
        return self.layout.headroom

    def __add__(self, other: object) -> EncryptedVector:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # sum() starts from 0
        if not isinstance(other, EncryptedVector):
            return NotImplemented
        pk = self.public_key
        if other.public_key is not pk and other.public_key.n != pk.n:
            raise InvalidCiphertext(
                f"cannot add vectors encrypted under different keys ({pk.fingerprint} and "
                f"{other.public_key.fingerprint})"
            )
        if (other.layout, other.frac_bits, other.length) != (
            self.layout,
            self.frac_bits,
            self.length,
        ):
            raise DataError(
                "cannot add encrypted vectors of different shape or encoding: "
                f"length {self.length} vs {other.length}, value_bits {self.layout.value_bits} vs "
                f"{other.layout.value_bits}, headroom {self.headroom} vs {other.headroom}, "
                f"frac_bits {self.frac_bits} vs {other.frac_bits}"
            )
        count = self.count + other.count
        if count > self.headroom:
            raise EncodingOverflow(
                f"adding these encrypted vectors would sum {count} vectors, more than the "
                f"declared headroom of {self.headroom}; encrypt with a larger headroom"
            )
        nsq = pk.nsq
        cts = [a * b % nsq for a, b in zip(self._cts, other._cts, strict=True)]
        return EncryptedVector._make(
            pk, cts, self.layout, self.frac_bits, self.length, count, False
        )

    def __radd__(self, other: object) -> EncryptedVector:
        return self.__add__(other)

    def ciphertexts(self, be_secure: bool = True) -> list[int]:
        """The raw ciphertexts, re-randomised first (once) if ``be_secure`` and not fresh."""
        if be_secure and not self._secure:
            pk = self.public_key
            nsq = pk.nsq
            if len(self._cts) >= TABLE_AFTER_USES:
                pk._warm()
            self._cts = [c * pk._noise() % nsq for c in self._cts]
            self._secure = True
        return [int(c) for c in self._cts]

    def to_bytes(self) -> bytes:
        """Serialise (re-randomising first): magic, key fingerprint, ``value_bits`` (u8),
        ``frac_bits`` (u16), ``headroom`` (u32), ``count`` (u32), ``length`` (u64), number of
        ciphertexts (u32), then each ciphertext fixed-length big-endian."""
        pk = self.public_key
        cts = self.ciphertexts(be_secure=True)
        lay = self.layout
        head = _CV_HEADER.pack(
            lay.value_bits, self.frac_bits, lay.headroom, self.count, self.length, len(cts)
        )
        width = pk.ciphertext_length
        return b"".join(
            [_CV_MAGIC, pk._fingerprint, head, *(c.to_bytes(width, "big") for c in cts)]
        )

    @classmethod
    def from_bytes(cls, public_key: PublicKey, data: bytes) -> EncryptedVector:
        """Parse and validate :meth:`to_bytes` output under ``public_key``.

        Raises:
            InvalidCiphertext: malformed, under another key, or any ciphertext out of range or
                not a unit.
        """
        body = _take_magic(data, _CV_MAGIC, "encrypted vector", InvalidCiphertext)
        body = _check_fingerprint(public_key, body)
        if len(body) < _CV_HEADER.size:
            raise InvalidCiphertext("encrypted vector bytes are truncated")
        value_bits, frac_bits, headroom, count, length, ncts = _CV_HEADER.unpack_from(body)
        try:
            layout = PackingLayout.for_key(public_key.bits, value_bits, headroom)
            check_frac_bits(frac_bits)
        except ValueError as exc:
            raise InvalidCiphertext(f"encrypted vector header is invalid: {exc}") from None
        if not 1 <= count <= headroom or ncts != layout.ciphertexts_for(length):
            raise InvalidCiphertext(
                f"encrypted vector header is inconsistent (count {count}, headroom {headroom}, "
                f"length {length}, {ncts} ciphertexts)"
            )
        width = public_key.ciphertext_length
        payload = body[_CV_HEADER.size :]
        if len(payload) != ncts * width:
            raise InvalidCiphertext(
                f"encrypted vector has {len(payload)} ciphertext bytes, expected {ncts * width}"
            )
        cts = [
            public_key.validate_ciphertext(int.from_bytes(payload[i : i + width], "big"))
            for i in range(0, len(payload), width)
        ]
        return cls._make(public_key, cts, layout, frac_bits, length, count, True)


# --------------------------------------------------------------------------- byte helpers


def _take_magic(data: bytes, magic: bytes, what: str, exc: type[Exception] = DataError) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(magic):
        raise exc(f"these bytes are not a trustspace Paillier {what} (bad magic/version)")
    return data[len(magic) :]


def _take_int(body: bytes, what: str) -> tuple[int, bytes]:
    if len(body) < 2:
        raise DataError(f"{what} bytes are truncated")
    (ln,) = struct.unpack(">H", body[:2])
    if len(body) < 2 + ln or ln == 0:
        raise DataError(f"{what} bytes are truncated")
    return int.from_bytes(body[2 : 2 + ln], "big"), body[2 + ln :]


def _check_fingerprint(pk: PublicKey, body: bytes) -> bytes:
    fp = body[:_FP_LEN]
    if len(fp) != _FP_LEN:
        raise InvalidCiphertext("ciphertext bytes are truncated")
    if fp != pk._fingerprint:  # public values: no constant-time need
        raise InvalidCiphertext(
            f"ciphertext was made under the key with fingerprint {fp.hex()}, but it is being "
            f"loaded with key {pk.fingerprint}; load it with the public key it was encrypted under"
        )
    return body[_FP_LEN:]
