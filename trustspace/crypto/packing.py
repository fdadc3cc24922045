"""Packing of integer vectors into Paillier plaintexts: many fixed-width slots per plaintext.

A slot holds ``value + offset`` with ``offset = 2**(value_bits - 1)`` so that signed values
become non-negative; its width is ``value_bits + ceil(log2(headroom))`` rounded up to whole bytes
so that the sum of up to ``headroom`` packed vectors never carries from one slot into the next.
Adding two packed plaintexts is slot-wise addition; the unpacker subtracts ``count * offset``,
where ``count`` is the number of vectors that were summed. Packing and unpacking are numpy
byte-level operations (no Python loop over values).

>>> import numpy as np
>>> layout = PackingLayout.for_key(n_bits=512, value_bits=32, headroom=4)
>>> a, b = np.array([1, -2, 3]), np.array([10, 20, -30])
>>> sums = [x + y for x, y in zip(layout.pack(a), layout.pack(b))]
>>> layout.unpack(sums, length=3, count=2).tolist()
[11, 18, -27]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trustspace.errors import ConfigError, EncodingOverflow, InvalidCiphertext

MAX_SLOT_BITS: Final = 63
"""Slot sums stay below 2**63 so that they and their decoded values fit an int64."""


@dataclass(frozen=True)
class PackingLayout:
    """How integer values are laid out in the slots of one plaintext.

    Attributes:
        value_bits: each value lies in ``[-2**(value_bits-1), 2**(value_bits-1))``.
        headroom: the declared maximum number of packed vectors that may be summed.
        slot_bytes: width of one slot in bytes.
        slots: number of slots in one plaintext.
    """

    value_bits: int
    headroom: int
    slot_bytes: int
    slots: int

    @classmethod
    def for_key(cls, n_bits: int, value_bits: int = 32, headroom: int = 1024) -> PackingLayout:
        """Choose the layout for a modulus of ``n_bits`` bits.

        Raises:
            ConfigError: if ``value_bits + ceil(log2(headroom)) > 63`` or a parameter is invalid.
        """
        if not 1 <= value_bits <= MAX_SLOT_BITS - 1:
            raise ConfigError(f"value_bits must be in [1, {MAX_SLOT_BITS - 1}], got {value_bits}")
        if headroom < 1:
            raise ConfigError(
                f"headroom (the number of vectors that may be summed) must be >= 1, got {headroom}"
            )
        need = value_bits + (headroom - 1).bit_length()
        if need > MAX_SLOT_BITS:
            raise ConfigError(
                f"value_bits={value_bits} with headroom={headroom} needs {need}-bit slots, more "
                f"than {MAX_SLOT_BITS}; lower value_bits or headroom"
            )
        slot_bytes = (need + 7) // 8
        slots = (n_bits - 1) // (8 * slot_bytes)  # packed value < 2**(n_bits-1) <= n
        if slots < 1:
            raise ConfigError(f"a {n_bits}-bit key cannot hold one {8 * slot_bytes}-bit slot")
        return cls(value_bits=value_bits, headroom=headroom, slot_bytes=slot_bytes, slots=slots)

    @property
    def offset(self) -> int:
        """What is added to every value so that it is non-negative in its slot."""
        return 1 << (self.value_bits - 1)

    def ciphertexts_for(self, length: int) -> int:
        """How many plaintexts a vector of ``length`` values needs."""
        return -(-length // self.slots)

    def check_values(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Return ``values`` as a flat int64 array, refusing anything outside the value range.

        Raises:
            EncodingOverflow: naming the first offending index and value.
            TypeError: if the array is not of an integer dtype.
        """
        arr = np.asarray(values)
        if arr.dtype.kind not in "iu":
            raise TypeError(
                f"packed vectors hold integers, got dtype {arr.dtype}; "
                "use frac_bits to encode floats"
            )
        arr = arr.reshape(-1)
        lo, hi = -self.offset, self.offset - 1
        if arr.size:
            bad = np.flatnonzero((arr < lo) | (arr > hi))
            if bad.size:
                i = int(bad[0])
                raise EncodingOverflow(
                    f"vector value {arr[i]} at index {i} does not fit value_bits="
                    f"{self.value_bits} (range [{lo}, {hi}]); declare more value_bits"
                )
        return arr.astype(np.int64, copy=False)

    def pack(self, values: npt.ArrayLike) -> list[int]:
        """Pack integer ``values`` into plaintexts (ints below ``2**(8*slot_bytes*slots)``)."""
        arr = self.check_values(values)
        nct = self.ciphertexts_for(arr.size)
        u = np.zeros(nct * self.slots, dtype="<u8")
        u[: arr.size] = (arr + self.offset).astype("<u8")
        u[arr.size :] = self.offset  # padding slots hold zero values, so they decode to 0
        raw = u.view(np.uint8).reshape(nct, self.slots, 8)[:, :, : self.slot_bytes]
        raw = np.ascontiguousarray(raw).reshape(nct, self.slots * self.slot_bytes)
        return [int.from_bytes(row.tobytes(), "little") for row in raw]

    def unpack(self, plaintexts: Sequence[Any], length: int, count: int) -> npt.NDArray[np.int64]:
        """Unpack the sum of ``count`` packed vectors into an int64 array of ``length`` values.

        Raises:
            InvalidCiphertext: if a plaintext has bits outside the slots or a slot holds more
                than ``count`` values can sum to (a tampered or mismatched ciphertext).
        """
        if not 1 <= count <= self.headroom:
            raise EncodingOverflow(f"count {count} is outside [1, headroom={self.headroom}]")
        if len(plaintexts) != self.ciphertexts_for(length):
            raise InvalidCiphertext(
                f"{len(plaintexts)} packed plaintexts cannot hold {length} values "
                f"({self.slots} per plaintext)"
            )
        width = self.slots * self.slot_bytes
        try:
            buf = b"".join(int(x).to_bytes(width, "little") for x in plaintexts)
        except OverflowError:
            raise InvalidCiphertext(
                "a packed plaintext has bits beyond its slots: the ciphertext was not made by "
                "this packing layout or was tampered with"
            ) from None
        raw = np.frombuffer(buf, dtype=np.uint8).reshape(-1, self.slot_bytes)
        wide = np.zeros((raw.shape[0], 8), dtype=np.uint8)
        wide[:, : self.slot_bytes] = raw
        u = wide.view("<u8").reshape(-1)[:length].astype(np.int64)
        limit = count << self.value_bits  # each slot sum is < count * 2**value_bits
        if u.size and int(u.max()) >= limit:
            raise InvalidCiphertext(
                "a packed slot exceeds what the declared number of summed vectors can produce: "
                "the ciphertext was not made by this packing layout or was tampered with"
            )
        out: npt.NDArray[np.int64] = u - np.int64(count * self.offset)
        return out
