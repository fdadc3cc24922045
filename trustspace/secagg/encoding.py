"""Fixed-point encoding of float vectors into integers modulo 2^32 or 2^64, safe for summing.

Invariant: for clipped inputs ``a_1 .. a_N`` with ``N <= max_clients``,
``decode(sum(encode(a_i)) mod 2^bits, N) == sum(round(clip(a_i) * 2^scale_bits)) / 2^scale_bits``,
so the decoded sum is within ``N / 2^(scale_bits + 1)`` of the true clipped sum. Each value is
clipped to ``[-clip, clip]``, scaled by ``2^scale_bits``, rounded to the nearest integer and
shifted by ``+offset`` (offset = round(clip * 2^scale_bits)) so every encoding is non-negative;
decoding subtracts ``N * offset``. The constructor refuses any configuration in which
``max_clients * (2 * offset + 1)`` could reach ``2^modulus_bits`` (the sum would wrap).

>>> import numpy as np
>>> enc = FixedPointEncoder(scale_bits=16, clip=100.0, modulus_bits=32, max_clients=10)
>>> total = enc.encode(np.array([1.5, -2.25])) + enc.encode(np.array([0.5, 2.0]))  # wraps mod 2^32
>>> enc.decode(total, n_clients=2).tolist()
[2.0, -0.25]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustspace.crypto.prg import dtype_for
from trustspace.errors import ConfigError, DataError

__all__ = ["FixedPointEncoder"]


@dataclass(frozen=True)
class FixedPointEncoder:
    """Encode floats clipped to ``[-clip, clip]`` with ``scale_bits`` fractional bits.

    Args:
        scale_bits: fractional bits; the resolution is ``2^-scale_bits``.
        clip: clipping bound (> 0); values beyond it are clipped, NaN is refused.
        modulus_bits: 32 or 64, as in :class:`SecAggConfig`.
        max_clients: the most encodings that will ever be summed.

    Raises:
        ConfigError: if ``max_clients`` encodings could wrap the modulus.
    """

    scale_bits: int
    clip: float
    modulus_bits: int = 64
    max_clients: int = 1000

    def __post_init__(self) -> None:
        if self.modulus_bits not in (32, 64):
            raise ConfigError(
                f"FixedPointEncoder.modulus_bits must be 32 or 64, got {self.modulus_bits!r}"
            )
        if not isinstance(self.scale_bits, int) or not 0 <= self.scale_bits <= 52:
            raise ConfigError(
                f"FixedPointEncoder.scale_bits must be in 0 .. 52, got {self.scale_bits!r}"
            )
        if not (isinstance(self.clip, float | int) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(
                f"FixedPointEncoder.clip must be a finite positive number, got {self.clip!r}"
            )
        if not isinstance(self.max_clients, int) or self.max_clients < 1:
            raise ConfigError(
                f"FixedPointEncoder.max_clients must be >= 1, got {self.max_clients!r}"
            )
        span = 2 * self.offset + 1  # encodings lie in [0, 2 * offset]
        if self.max_clients * span > 1 << self.modulus_bits:
            raise ConfigError(
                f"FixedPointEncoder: {self.max_clients} clients x range {span} "
                f"(clip={self.clip}, scale_bits={self.scale_bits}) can exceed "
                f"2^{self.modulus_bits} and wrap the sum; lower scale_bits or clip, or use "
                "modulus_bits=64"
            )
        if self.offset >= 1 << 53:
            raise ConfigError(
                "FixedPointEncoder: clip * 2^scale_bits must stay below 2^53 (float precision)"
            )

    @property
    def offset(self) -> int:
        """The shift that makes every encoding non-negative: round(clip * 2^scale_bits)."""
        return round(self.clip * (1 << self.scale_bits))

    def encode(self, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Clip, scale, round and shift ``values`` into unsigned integers (uint32 or uint64).

        Raises:
            DataError: if a value is NaN or the array is not numeric.
        """
        arr = np.asarray(values, dtype=np.float64)
        if np.isnan(arr).any():
            raise DataError("FixedPointEncoder.encode: input contains NaN; drop or impute it first")
        scaled = np.rint(np.clip(arr, -self.clip, self.clip) * float(1 << self.scale_bits))
        # |scaled| <= offset < 2^53, exact in float64 and int64
        out = scaled.astype(np.int64) + self.offset
        return out.astype(dtype_for(self.modulus_bits))

    def decode(self, total: np.ndarray[Any, Any], n_clients: int) -> np.ndarray[Any, Any]:
        """Decode the modular sum of ``n_clients`` encodings back to floats.

        Raises:
            ConfigError: if ``n_clients`` exceeds ``max_clients`` (the sum may have wrapped).
        """
        if not 1 <= n_clients <= self.max_clients:
            raise ConfigError(
                f"FixedPointEncoder.decode: n_clients={n_clients} must be in 1 .. "
                f"max_clients={self.max_clients}"
            )
        raw = np.asarray(total).astype(np.uint64)
        # The sum of encodings lies in [0, n * 2 * offset] < 2^modulus_bits, so it did not
        # wrap; minus n * offset it lies in [-2^63, 2^63): wrap-around uint64 subtraction
        # viewed as int64 is exact.
        signed = (raw - np.uint64(n_clients * self.offset)).view(np.int64)
        return signed.astype(np.float64) / float(1 << self.scale_bits)
