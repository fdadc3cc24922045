"""Fixed-point encoding of ints and floats into the Paillier plaintext space Z_n.

Invariant (for values inside the encodable range, one encoding context):
``decode(encode(a) + encode(b) mod n) == a + b`` exactly for ints, and up to the rounding of
``a`` and ``b`` to multiples of ``2**-frac_bits`` for floats.

An *encoding context* is one ``frac_bits`` value: a real ``x`` is stored as the integer
``round(x * 2**frac_bits)``, negatives as ``n - |v|``. Every value of one context has the same
scale, so adding two ciphertexts of one context is a single modular multiplication (python-paillier
gives each float its own exponent, and aligning two exponents costs a modular exponentiation).

The encodable range is ``|v| <= max_int(n) = n // 3 - 1`` (python-paillier's convention). Values
that decrypt into the gap ``(max_int, n - max_int)`` are the sign of an overflow (too many or too
large additions) and raise :class:`~trustspace.errors.EncodingOverflow` instead of wrapping.

>>> n = 1_000_003 * 1_000_033
>>> decode((encode(12.5, 4, n) + encode(-2, 4, n)) % n, 4, n)
10.5
>>> decode(encode(-7, 0, n), 0, n)
-7
"""

from __future__ import annotations

import math
import numbers
from typing import Final

from trustspace.errors import ConfigError, DataError, EncodingOverflow

DEFAULT_FRAC_BITS: Final = 52
"""Fractional bits of the default float context: the absolute precision 2**-52 matches the
52-bit mantissa of a float64 near 1.0; use more bits for very small magnitudes."""

MAX_FRAC_BITS: Final = 1024
"""Upper bound on ``frac_bits`` (a larger scale would eat most of a 2048-bit plaintext space)."""

Number = int | float


def max_int(n: int) -> int:
    """Largest magnitude an encoded value may have under modulus ``n`` (``n // 3 - 1``).

    The third of Z_n that stays unused separates positives from negatives, so that an overflow
    is detected on decryption instead of silently wrapping.
    """
    return n // 3 - 1


def check_frac_bits(frac_bits: int) -> int:
    """Validate a fixed-point scale and return it as a plain ``int``.

    Raises:
        ConfigError: if ``frac_bits`` is not an integer in ``[0, MAX_FRAC_BITS]``.
    """
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, numbers.Integral):
        raise TypeError(f"frac_bits must be an int, got {type(frac_bits).__name__}")
    fb = int(frac_bits)
    if not 0 <= fb <= MAX_FRAC_BITS:
        raise ConfigError(f"frac_bits must be in [0, {MAX_FRAC_BITS}], got {fb}")
    return fb


def to_python_number(value: object) -> Number:
    """Turn ints, floats and numpy integer/float scalars into a Python ``int`` or ``float``.

    numpy scalars are accepted (python-paillier overflows on ``numpy.int64``); anything else,
    including ``bool`` and ``complex``, is refused.

    Raises:
        TypeError: if ``value`` is not a real number.
        DataError: if ``value`` is NaN or infinite.
    """
    if isinstance(value, bool):
        raise TypeError("cannot encode a bool; convert it to int first if that is intended")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        out: Number = value
    elif isinstance(value, numbers.Integral):  # numpy integer scalars register here
        return int(value)
    elif isinstance(value, numbers.Real):  # numpy floating scalars, Fraction, Decimal
        out = float(value)
    else:
        raise TypeError(f"can only encode ints and floats, got {type(value).__name__}: {value!r}")
    if not math.isfinite(out):
        raise DataError(f"cannot encode a non-finite float: {out!r}")
    return out


def scale_value(value: Number, frac_bits: int) -> int:
    """Return ``round(value * 2**frac_bits)`` exactly (ints are shifted, floats rounded half-even).

    >>> scale_value(0.75, 2), scale_value(-3, 4), scale_value(1e300, 8) == int(1e300) << 8
    (3, -48, True)
    """
    if isinstance(value, int):
        return value << frac_bits
    if abs(value) >= 2.0**53:  # already an integer; avoid float overflow in ldexp
        return int(value) << frac_bits
    return round(math.ldexp(value, frac_bits))


def encode(value: object, frac_bits: int, n: int) -> int:
    """Encode ``value`` with ``frac_bits`` fractional bits as an element of Z_n.

    Args:
        value: an int, float or numpy scalar.
        frac_bits: the scale of the encoding context (0 for exact integers).
        n: the Paillier modulus.

    Returns:
        An integer in ``[0, n)``.

    Raises:
        EncodingOverflow: if the scaled value exceeds ``max_int(n)`` in magnitude.
        TypeError, DataError: for non-numbers and non-finite floats.
    """
    v = scale_value(to_python_number(value), frac_bits)
    if abs(v) > max_int(n):
        raise EncodingOverflow(
            f"value {value!r} scaled by 2**{frac_bits} has {abs(v).bit_length()} bits, more than "
            f"the {max_int(n).bit_length()}-bit encodable range of this key; use a smaller "
            "frac_bits or a larger key"
        )
    return v % n


def decode_int(x: int, n: int) -> int:
    """Map an element of Z_n back to a signed integer, refusing the overflow gap.

    Raises:
        EncodingOverflow: if ``x`` lies in ``(max_int, n - max_int)``.
    """
    limit = max_int(n)
    if 0 <= x <= limit:
        return int(x)
    if n - limit <= x < n:
        return int(x) - n
    raise EncodingOverflow(
        "decrypted value is outside the encodable range |v| <= n/3: the encrypted sum "
        "overflowed (too many or too large terms), or the ciphertext was not produced by this "
        "encoding; use smaller values/scale or a larger key"
    )


def decode(x: int, frac_bits: int, n: int) -> Number:
    """Decode an element of Z_n: an ``int`` when ``frac_bits == 0``, else a ``float``.

    Raises:
        EncodingOverflow: see :func:`decode_int`.
    """
    v = decode_int(x, n)
    if frac_bits == 0:
        return v
    return v / (1 << frac_bits)  # exact int/int true division, correctly rounded
