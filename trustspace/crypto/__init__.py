"""Hazmat tier: cryptographic primitives on ints, bytes and numpy arrays.

Warning: these are building blocks for experts and tests. They do not re-randomise, validate or
encode for you. Use ``trustspace.paillier`` and ``trustspace.secagg`` unless you know why not.
"""
