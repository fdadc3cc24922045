"""Wire format of the SecAgg+ messages (strict, canonical) and the fixed-point encoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustspace.crypto.shamir import SHARE_BYTES
from trustspace.errors import ConfigError, DataError, ProtocolError
from trustspace.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    FixedPointEncoder,
    MaskedInput,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
)
from trustspace.secagg.messages import SEALED_SHARES_BYTES

SID = bytes(range(16))
TYPES = [
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
    SurvivorSignature,
]
SAMPLES = [
    AdvertiseKeys(SID, 7, b"a" * 32, b"b" * 32),
    AdvertiseKeys(SID, 7, b"a" * 32, b"b" * 32, b"c" * 32, b"identity signature"),
    EncryptedShares(SID, 7, 9, b"c" * SEALED_SHARES_BYTES),
    MaskedInput(SID, 7, 32, np.arange(5, dtype="<u4").tobytes()),
    MaskedInput(SID + b"x", 2**63 - 1, 64, b""),
    UnmaskRequest(SID, (1, 2, 5), (3,)),
    UnmaskRequest(SID, (), ()),
    UnmaskRequest(SID, (1, 4), (2,), ((1, b"x" * 64), (4, b"y" * 64))),
    SurvivorSignature(SID, 3, b"z" * 64),
    UnmaskShares(SID, 7, ((1, b"s" * SHARE_BYTES), (7, b"t" * SHARE_BYTES)), ((3, b"k" * 66),)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_strict_lengths(msg: object) -> None:
    cls = type(msg)
    data = msg.to_bytes()  # type: ignore[attr-defined]
    assert cls.from_bytes(data) == msg  # type: ignore[attr-defined]
    for cut in range(len(data)):
        with pytest.raises(ProtocolError, match=cls.__name__):
            cls.from_bytes(data[:cut])  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="trailing"):
        cls.from_bytes(data + b"\x00")  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="version"):
        cls.from_bytes(data[:1] + b"\x09" + data[2:])  # type: ignore[attr-defined]
    for other in TYPES:
        if other is not cls:
            with pytest.raises(ProtocolError, match="tag"):
                other.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cls=st.sampled_from(TYPES))
def test_arbitrary_bytes_raise_only_protocol_error_and_encoding_is_canonical(
    data: bytes, cls: type
) -> None:
    try:
        msg = cls.from_bytes(data)
    except ProtocolError:
        return
    assert msg.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(msg=st.sampled_from(SAMPLES), pos=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_corrupted_bytes_never_raise_another_exception(msg: object, pos: int, flip: int) -> None:
    data = bytearray(msg.to_bytes())  # type: ignore[attr-defined]
    data[pos % len(data)] ^= flip
    try:
        out = type(msg).from_bytes(bytes(data))  # type: ignore[attr-defined]
    except ProtocolError:
        return
    assert out.to_bytes() == bytes(data)


def test_semantic_checks_name_the_message() -> None:
    with pytest.raises(ProtocolError, match="UnmaskRequest: survivors list must be strictly"):
        UnmaskRequest(SID, (2, 1), ())
    with pytest.raises(ProtocolError, match="UnmaskShares: both shares revealed"):
        UnmaskShares(SID, 1, ((2, bytes(66)),), ((2, bytes(66)),))
    with pytest.raises(ProtocolError, match="AdvertiseKeys: session id"):
        AdvertiseKeys(b"short", 1, bytes(32), bytes(32))
    with pytest.raises(ProtocolError, match="EncryptedShares: sender and recipient"):
        EncryptedShares(SID, 3, 3, bytes(SEALED_SHARES_BYTES))
    with pytest.raises(ProtocolError, match="MaskedInput: expected bytes"):
        MaskedInput.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="not a client id"):
        AdvertiseKeys(SID, 0, bytes(32), bytes(32))
    huge = UnmaskRequest(SID, (1,), ()).to_bytes()
    huge = huge[: 3 + len(SID)] + (2**32 - 1).to_bytes(4, "big") + huge[3 + len(SID) + 4 :]
    with pytest.raises(ProtocolError, match="exceeds"):
        UnmaskRequest.from_bytes(huge)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=20,
    ),
    bits=st.sampled_from([32, 64]),
)
def test_fixed_point_sum_decodes_to_the_clipped_sum(rows: list[list[float]], bits: int) -> None:
    scale, clip = (8, 1000.0) if bits == 32 else (20, 1e6)
    enc = FixedPointEncoder(scale_bits=scale, clip=clip, modulus_bits=bits, max_clients=20)
    total = np.zeros(3, dtype=np.uint32 if bits == 32 else np.uint64)
    for row in rows:
        total += enc.encode(np.array(row))
    got = enc.decode(total, len(rows))
    exact = np.clip(np.array(rows), -clip, clip).sum(axis=0)
    assert np.allclose(got, exact, rtol=0, atol=len(rows) * 2.0 ** -(scale + 1) + 1e-6)


def test_fixed_point_refuses_configurations_that_could_wrap() -> None:
    # 2 * 100 * 2^16 + 1 = 13,107,201 per client; 2^32 / that = 327 clients fit
    FixedPointEncoder(scale_bits=16, clip=100.0, modulus_bits=32, max_clients=327)
    with pytest.raises(ConfigError, match=r"328 clients x range 13107201 .* wrap"):
        FixedPointEncoder(scale_bits=16, clip=100.0, modulus_bits=32, max_clients=328)
    enc = FixedPointEncoder(scale_bits=16, clip=100.0, modulus_bits=32, max_clients=327)
    worst = enc.encode(np.full(1, 1e9)).astype(np.uint64) * 327
    assert int(worst[0]) < 2**32  # the bound is tight and sound
    with pytest.raises(ConfigError, match="n_clients=400"):
        enc.decode(np.zeros(1, np.uint32), 400)
    with pytest.raises(DataError, match="NaN"):
        enc.encode(np.array([1.0, np.nan]))
    with pytest.raises(ConfigError, match="clip"):
        FixedPointEncoder(scale_bits=16, clip=-1.0)
    assert enc.decode(enc.encode(np.array([-1e9, 1e9, 0.1])), 1).tolist()[:2] == [-100.0, 100.0]
