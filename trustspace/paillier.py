"""Paillier encryption, the safe API: keys, encrypted numbers and packed encrypted vectors.

>>> from trustspace.paillier import generate_keypair
>>> from trustspace.crypto.paillier import _allow_insecure_test_keys  # tests only
>>> test_only = _allow_insecure_test_keys(); test_only.__enter__()   # 512-bit keys for speed
>>> pk, sk = generate_keypair(512)      # real code: generate_keypair() -> 3072 bits
>>> c = pk.encrypt(12.5)
>>> sk.decrypt(c + pk.encrypt(-2))
10.5
>>> import numpy as np
>>> ev = pk.encrypt_vector(np.array([1, -2, 3]), headroom=2)
>>> sk.decrypt_vector(ev + ev).tolist()
[2, -4, 6]

The three roles of a Paillier query, with one fixed-point context (``frac_bits``) so that the
aggregator's additions are single modular multiplications:

>>> FB = 32                                           # the query's encoding context
>>> node_a = [pk.encrypt(x, frac_bits=FB) for x in (10.5, 3.25)]      # node: local aggregates
>>> node_b = [pk.encrypt(x, frac_bits=FB) for x in (-0.5, 1.0)]
>>> wire = [[c.to_bytes() for c in node] for node in (node_a, node_b)]  # re-randomised, tagged
>>> agg_pk = PublicKey.from_bytes(pk.to_bytes())      # aggregator: public key only
>>> cols = zip(*[[EncryptedNumber.from_bytes(agg_pk, b) for b in node] for node in wire])
>>> totals = [sum(col) for col in cols]               # validated on load, then added
>>> [sk.decrypt(EncryptedNumber.from_bytes(pk, t.to_bytes())) for t in totals]   # analyst
[10.0, 4.25]
>>> hist = [pk.encrypt_vector(np.array(h), headroom=8) for h in ([1, 0, 4], [2, 2, 0])]
>>> sk.decrypt_vector(EncryptedVector.from_bytes(pk, sum(hist).to_bytes())).tolist()
[3, 2, 4]
>>> len(pk.fingerprint)                               # a stable key id for configs and logs
32
>>> _ = test_only.__exit__(None, None, None)

Everything here is re-exported from :mod:`trustspace.crypto.paillier` (hazmat), which also has
the ``raw_*`` methods and the precomputation settings. Encrypted values re-randomise themselves
before they are serialised; deserialisation validates the key fingerprint and the ciphertexts.
Security notes: ``docs/security.md (Paillier)``.
"""

from __future__ import annotations

from trustspace.crypto.encoding import DEFAULT_FRAC_BITS
from trustspace.crypto.paillier import (
    DEFAULT_HEADROOM,
    DEFAULT_KEY_BITS,
    MIN_KEY_BITS,
    EncryptedNumber,
    EncryptedVector,
    PrivateKey,
    PublicKey,
    clear_tables,
    configure_tables,
    generate_keypair,
    shutdown_pools,
)

__all__ = [
    "DEFAULT_FRAC_BITS",
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
