"""Paillier encryption, the safe API: keys, encrypted numbers and packed encrypted vectors.

>>> from trustspace.paillier import generate_keypair
>>> from trustspace.crypto.paillier import _allow_insecure_test_keys  # tests only
>>> with _allow_insecure_test_keys():
...     pk, sk = generate_keypair(512)      # real code: generate_keypair() -> 3072 bits
>>> c = pk.encrypt(12.5)
>>> sk.decrypt(c + pk.encrypt(-2))
10.5
>>> import numpy as np
>>> ev = pk.encrypt_vector(np.array([1, -2, 3]), headroom=2)
>>> sk.decrypt_vector(ev + ev).tolist()
[2, -4, 6]

Everything here is re-exported from :mod:`trustspace.crypto.paillier` (hazmat), which also has
the ``raw_*`` methods and the precomputation settings. Encrypted values re-randomise themselves
before they are serialised; deserialisation validates the key fingerprint and the ciphertexts.
Security notes: ``docs/security-paillier.md``.
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
