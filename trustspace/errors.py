"""The exceptions of trustspace: one base class, one subclass per kind of failure.

Every error a user can trigger says what was wrong, where (node, file, line, column, key) and
what to do. Cryptographic verification failures are deliberately opaque (one message, no
detail) so that they cannot serve as an oracle.
"""

from __future__ import annotations


class TrustspaceError(Exception):
    """Base class of every error raised on purpose by trustspace."""


class ConfigError(TrustspaceError, ValueError):
    """A configuration file or parameter is invalid (the message names file, key and value)."""


class DataError(TrustspaceError, ValueError):
    """A data file is missing or malformed (the message names file, line and column)."""


class CryptoError(TrustspaceError):
    """A cryptographic operation failed (opaque on purpose: no oracle)."""


class InvalidCiphertext(CryptoError, ValueError):
    """A ciphertext is out of range, not a unit, or under another key."""


class EncodingOverflow(TrustspaceError, OverflowError):
    """A value does not fit the encoding (plaintext space, fixed point or packed slot)."""


class ProtocolError(TrustspaceError):
    """A protocol run was aborted (the message names the stage and the counts)."""


class ThresholdError(ProtocolError):
    """Fewer than the threshold number of parties remain; no partial result is produced."""


class PolicyError(TrustspaceError, PermissionError):
    """A node's policy refused the request (the message names the node and the rule)."""


class DisclosureError(PolicyError):
    """A result would describe fewer records than a node's ``min_group_size``."""


class AuthenticationError(TrustspaceError):
    """A peer's certificate was refused (wrong CA, wrong role, expired or revoked)."""


class NodeError(TrustspaceError):
    """A remote node failed or could not be reached (the message names the node)."""


class LedgerError(TrustspaceError):
    """A privacy-budget ledger file is corrupt, locked or unusable (the message names the file)."""
