"""End-to-end sealed node-to-node messages, relayed by an untrusted aggregator (pure, no I/O).

The aggregator relays every node-to-node message of a vertical protocol and may drop, replay,
reorder, substitute or forge them. A ``Channel`` protects them end to end:

- **Hello (step 0).** Each node makes a fresh X25519 key pair per session and signs a
  canonical binding ``{node, session, context digest, sorted participants, X25519 key}`` with
  its certificate key (ECDSA P-256, domain ``HELLO_DOMAIN``, separate from every other
  signature of the data space). ``accept`` checks every participant's hello: signed by a
  valid, unrevoked *node* certificate of our CA whose name is the hello's name, for the same
  session, context and participant set, our own hello unchanged, exactly the participants.
- **Keys.** For each ordered pair (sender, recipient) a directional AES-256-GCM key is derived
  by HKDF-SHA256 (``crypto.keyagreement.derive_key``) from the X25519 secret, bound to a
  session digest = SHA-256(session, context digest, all hellos) and to the pair's positions
  in the sorted participant list. A node whose context differs, or who saw other hellos,
  derives other keys and can open nothing.
- **Nonces.** Deterministic, never repeated under a key: the 96-bit nonce is
  (step, message number, chunk number), each 32 bits. A key lives for one session (its
  X25519 keys are fresh), a channel seals each step once (``seal`` refuses a second time), and
  within a step each (message, chunk) pair is sealed once.
- **Envelopes.** A message is cut into chunks of at most ``CHUNK_BYTES``. Each chunk travels
  as one ``Envelope``; its clear header (version, final flag, step, message count, message
  number, chunk count, chunk number) and the session digest, sender and recipient are the
  AES-GCM associated data; the message kind travels inside the ciphertext (the aggregator
  learns only sizes and counts). Every step a sender sends every active peer exactly one
  batch: its messages for that peer, or one empty marker, so a dropped batch is detected; the
  final flag tells peers that the sender is done and will send no more.
- **Opening** refuses, naming the sender and never any content: an envelope for someone
  else, from a non-participant or a finished peer, failing authentication (forged, altered,
  other session, swapped sender or recipient), from an earlier step (replay), a repeated,
  missing or inconsistent chunk or message, a missing batch, more than ``max_bytes`` in a
  step.

Certificate checks stay out of this protocol layer (as in ``trustspace.secagg``): the
channel signs and verifies through a ``HelloIdentity`` (``trustspace.transport.vertical_identity
.hello_identity(creds)`` adapts a node's ``Credentials``), and checks revocation with the
``revoked(cert_pem) -> reason`` callable it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trustspace.crypto.keyagreement import (
    KEY_BYTES,
    NONCE_BYTES,
    aead_decrypt,
    aead_encrypt,
    derive_key,
    exchange,
    generate_keypair,
)
from trustspace.errors import AuthenticationError, ConfigError, CryptoError, ProtocolError
from trustspace.vertical._party import KIND_MAX, Message, Party

__all__ = [
    "CHUNK_BYTES",
    "ENVELOPE_MAX",
    "ENVELOPE_OVERHEAD",
    "HELLO_DOMAIN",
    "Channel",
    "Envelope",
    "HelloIdentity",
    "Session",
    "relay_local",
]

CHUNK_BYTES = 4 * 1024 * 1024
"""The most message bytes one envelope carries (an envelope adds ``ENVELOPE_OVERHEAD``)."""

HELLO_DOMAIN = b"trustspace/vertical/hello/v1\x00"
"""Separates vertical channel hellos from every other signature of the data space."""

_AD_DOMAIN = b"trustspace/vertical/envelope/v1\x00"
_SID_DOMAIN = b"trustspace/vertical/session/v1\x00"
_KEY_PURPOSE = b"vertical/channel/aes256gcm"
_HELLO_MAGIC = b"TSVH\x01"
_VERSION = 1
_FINAL = 0x01
_HEADER = struct.Struct(">BBIIIII")  # version, flags, step, count, seq, chunks, chunk
_TAG_BYTES = 16
ENVELOPE_OVERHEAD = _HEADER.size + NONCE_BYTES + 1 + KIND_MAX + _TAG_BYTES
ENVELOPE_MAX = CHUNK_BYTES + ENVELOPE_OVERHEAD
"""The largest envelope body a channel produces or accepts."""
_BINDING_MAX = 64 * 1024
_CERT_MAX = 16 * 1024
_SIG_MAX = 256
_MAX_INDEX = 2**32 - 1
DEFAULT_MAX_ENVELOPES = 16384


def _canonical_json(obj: Any) -> bytes:
    """The one encoding of a JSON value; byte-identical to ``transport.signing.canonical_json``
    (repeated here because a protocol layer does not import the transport layer)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _fixed(nonce: bytes) -> Callable[[int], bytes]:
    """An ``rng`` for ``aead_encrypt`` that yields our deterministic nonce."""

    def rng(n: int) -> bytes:
        if n != len(nonce):
            raise ProtocolError("nonce length mismatch")
        return nonce

    return rng


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class HelloIdentity(Protocol):
    """What a channel needs of its node's identity (the transport layer implements it).

    ``sign(blob, domain=...)`` signs ``domain + blob`` with the node's certificate key;
    ``verify(cert_pem, blob, signature, domain=..., role=..., where=...)`` checks that
    ``cert_pem`` is a currently valid ``role`` certificate of our CA that signed
    ``domain + blob`` and returns the certificate's name, or raises ``AuthenticationError``
    naming ``where``.
    """

    @property
    def name(self) -> str: ...

    @property
    def cert_pem(self) -> bytes: ...

    def sign(self, blob: bytes, *, domain: bytes) -> bytes: ...

    def verify(
        self,
        cert_pem: bytes,
        blob: bytes,
        signature: bytes,
        *,
        domain: bytes,
        role: str,
        where: str,
    ) -> str: ...


@dataclass(frozen=True)
class Envelope:
    """What the aggregator relays: one chunk of one message; ``body`` is AES-GCM ciphertext
    with its clear header."""

    sender: str
    recipient: str
    body: bytes

    def __repr__(self) -> str:
        return f"Envelope({self.sender!r} -> {self.recipient!r}, {len(self.body)} bytes)"


def _encode_hello(binding: bytes, cert: bytes, signature: bytes) -> bytes:
    return _HELLO_MAGIC + _lp(binding) + _lp(cert) + _lp(signature)


def _decode_hello(raw: bytes, where: str) -> tuple[bytes, bytes, bytes]:
    """(binding, cert, signature) of a hello; exact framing, bounded sizes."""
    if not isinstance(raw, bytes) or not raw.startswith(_HELLO_MAGIC):
        raise ProtocolError(f"{where}: not a vertical channel hello (version 1)")
    parts: list[bytes] = []
    pos = len(_HELLO_MAGIC)
    for limit in (_BINDING_MAX, _CERT_MAX, _SIG_MAX):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{where}: truncated hello")
        (size,) = struct.unpack_from(">I", raw, pos)
        pos += 4
        if size > limit or pos + size > len(raw):
            raise ProtocolError(f"{where}: malformed hello (a field of {size} bytes)")
        parts.append(raw[pos : pos + size])
        pos += size
    if pos != len(raw):
        raise ProtocolError(f"{where}: {len(raw) - pos} trailing bytes after the hello")
    return parts[0], parts[1], parts[2]


class Channel:
    """One node's end of the sealed channels of one session (see the module docstring).

    Args:
        creds: this node's identity (``HelloIdentity``; from ``Credentials`` via
            ``trustspace.transport.vertical_identity.hello_identity``).
        nodes: every participant's name, this node among them (order does not matter).
        session: 32 bytes chosen by the aggregator, fresh per session.
        context: what every honest node derives itself (signed query digest and what the
            session computes); a node with another context can open nothing.
        revoked: ``revoked(cert_pem) -> reason`` ("" when not revoked), checked for every
            peer's hello; ``None`` checks nothing beyond the CA.
        max_bytes: the most envelope bytes accepted from all peers in one step (and sent to
            one peer in one step).
        rng: randomness for the ephemeral X25519 key (keep the default outside tests).

    Use: ``hello()``; ``accept(all hellos)``; then per step ``open(envelopes of the previous
    step)`` and ``seal(messages)``. ``step`` is the last step sealed (0 after the hello).
    """

    def __init__(
        self,
        creds: HelloIdentity,
        nodes: Sequence[str],
        session: bytes,
        context: bytes,
        revoked: Callable[[bytes], str] | None = None,
        max_bytes: int = 2**31,
        *,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._id = creds
        self.name = creds.name
        if isinstance(nodes, (str, bytes)):
            raise ConfigError("vertical channel: nodes must be a sequence of node names")
        names = list(nodes)
        if len(set(names)) != len(names):
            raise ConfigError("vertical channel: a node is named twice among the participants")
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError("vertical channel: every participant needs a non-empty name")
        if self.name not in names:
            raise ConfigError(f"vertical channel: this node {self.name!r} is not a participant")
        if len(names) < 2:
            raise ConfigError("vertical channel: a session needs at least two nodes")
        if not isinstance(session, bytes) or len(session) != 32:
            raise ConfigError("vertical channel: the session id must be 32 bytes")
        if not isinstance(context, bytes):
            raise ConfigError("vertical channel: the context must be bytes")
        if max_bytes <= 0:
            raise ConfigError(f"vertical channel: max_bytes must be positive, not {max_bytes}")
        self.nodes: tuple[str, ...] = tuple(sorted(names))
        self.session = session
        self.context_digest = hashlib.sha256(context).digest()
        self.max_bytes = max_bytes
        self._revoked = revoked
        self._where = f"vertical session {session[:4].hex()} at {self.name}"
        self._sk: bytes | None
        self._sk, self._pk = generate_keypair(rng)
        self._hello: bytes | None = None
        self._sid = b""
        self._send: dict[str, bytes] = {}
        self._recv: dict[str, bytes] = {}
        self._finished: dict[str, int] = {}  # peer -> the step at which it said it was done
        self.step = 0
        self._opened = 0  # the last step whose envelopes were opened
        self._final = False

    # -- step 0 ---------------------------------------------------------------------------

    def _binding(self) -> dict[str, Any]:
        return {
            "v": _VERSION,
            "what": "trustspace vertical channel hello",
            "node": self.name,
            "session": self.session.hex(),
            "context": self.context_digest.hex(),
            "nodes": list(self.nodes),
            "x25519": self._pk.hex(),
        }

    def hello(self) -> bytes:
        """This node's signed hello (the same bytes on every call)."""
        if self._hello is None:
            binding = _canonical_json(self._binding())
            signature = self._id.sign(binding, domain=HELLO_DOMAIN)
            self._hello = _encode_hello(binding, self._id.cert_pem, signature)
        return self._hello

    def accept(self, hellos: Mapping[str, bytes]) -> None:
        """Check every participant's hello and derive the pairwise keys (once).

        Raises ``AuthenticationError`` for a refused certificate or signature (another CA,
        not a node, expired, revoked, signature does not verify, another node's certificate)
        and ``ProtocolError`` for a hello of another session, context or participant set, a
        missing, extra or replaced hello.
        """
        if self._sk is None:
            raise ProtocolError(f"{self._where}: the hellos were already accepted")
        own = self.hello()
        got, want = set(hellos), set(self.nodes)
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            raise ProtocolError(
                f"{self._where}: the hellos must come from exactly the participants; "
                f"missing {missing}, not participants {extra}; aborting"
            )
        keys: dict[str, bytes] = {}
        for name in self.nodes:
            raw = hellos[name]
            where = f"{self._where}: hello of {name}"
            if name == self.name:
                if not isinstance(raw, bytes) or not hmac.compare_digest(raw, own):
                    raise ProtocolError(f"{where}: this node's own hello was replaced; aborting")
                continue
            keys[name] = self._check_hello(name, raw, where)
        if len(set(keys.values()) | {self._pk}) != len(self.nodes):
            raise ProtocolError(f"{self._where}: two hellos carry the same X25519 key; aborting")
        transcript = hashlib.sha256()
        for name in self.nodes:
            transcript.update(_lp(name.encode()) + _lp(hellos[name]))
        self._sid = hashlib.sha256(
            _SID_DOMAIN + _lp(self.session) + self.context_digest + transcript.digest()
        ).digest()
        me = self.nodes.index(self.name)
        for name, pk in keys.items():
            try:
                shared = exchange(self._sk, pk)
            except CryptoError:
                raise ProtocolError(
                    f"{self._where}: hello of {name} carries an invalid X25519 key; aborting"
                ) from None
            peer = self.nodes.index(name)
            self._send[name] = derive_key(shared, _KEY_PURPOSE, self._sid, me, peer, KEY_BYTES)
            self._recv[name] = derive_key(shared, _KEY_PURPOSE, self._sid, peer, me, KEY_BYTES)
        self._sk = None  # the ephemeral secret is not needed any more

    def _check_hello(self, name: str, raw: bytes, where: str) -> bytes:
        """A peer's X25519 key from its hello, after every check."""
        binding_raw, cert, signature = _decode_hello(raw, where)
        signer = self._id.verify(
            cert, binding_raw, signature, domain=HELLO_DOMAIN, role="node", where=where
        )
        if signer != name:
            raise AuthenticationError(
                f"{where}: signed with the certificate of node {signer!r}, not of {name!r}"
            )
        if self._revoked is not None:
            why = self._revoked(cert)
            if why:
                raise AuthenticationError(f"{where}: its certificate is revoked ({why})")
        try:
            binding = json.loads(binding_raw)
            ok = isinstance(binding, dict) and _canonical_json(binding) == binding_raw
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok or set(binding) != set(self._binding()) or binding.get("v") != _VERSION:
            raise ProtocolError(f"{where}: malformed hello binding (not canonical version 1)")
        if binding["node"] != name:
            raise ProtocolError(f"{where}: its binding names node {binding['node']!r}")
        if binding["session"] != self.session.hex():
            raise ProtocolError(f"{where}: it is for another session (replayed); aborting")
        if binding["context"] != self.context_digest.hex():
            raise ProtocolError(
                f"{where}: that node computes something else (another query, view or round "
                "gives another context); aborting"
            )
        if binding["nodes"] != list(self.nodes):
            raise ProtocolError(f"{where}: that node was told of other participants; aborting")
        try:
            pk = bytes.fromhex(binding["x25519"])
        except (TypeError, ValueError):
            pk = b""
        if len(pk) != KEY_BYTES:
            raise ProtocolError(f"{where}: its X25519 key is not 32 bytes of hex")
        return pk

    # -- steps ----------------------------------------------------------------------------

    @property
    def active_peers(self) -> tuple[str, ...]:
        """The peers that have not said they are done (in participant order)."""
        return tuple(n for n in self.nodes if n != self.name and n not in self._finished)

    def _ad(self, sender: str, recipient: str, header: bytes) -> bytes:
        return _AD_DOMAIN + self._sid + _lp(sender.encode()) + _lp(recipient.encode()) + header

    def _ready(self, what: str) -> None:
        if self._sk is not None or not self._sid:
            raise ProtocolError(f"{self._where}: {what} before the hellos were accepted")
        if self._final:
            raise ProtocolError(f"{self._where}: {what} after this node's final step")

    def _seal_one(
        self, recipient: str, step: int, flags: int, count: int, seq: int, kind: str, body: bytes
    ) -> list[Envelope]:
        key = self._send[recipient]
        prefix = bytes([len(kind)]) + kind.encode("ascii")
        chunks = max(1, -(-len(body) // CHUNK_BYTES)) if count else 0
        view = memoryview(body)
        out: list[Envelope] = []
        for chunk in range(max(chunks, 1)):
            header = _HEADER.pack(_VERSION, flags, step, count, seq, chunks, chunk)
            nonce = struct.pack(">III", step, seq, chunk)
            data = prefix + bytes(view[chunk * CHUNK_BYTES : (chunk + 1) * CHUNK_BYTES])
            sealed = aead_encrypt(
                key, data, self._ad(self.name, recipient, header), rng=_fixed(nonce)
            )
            out.append(Envelope(self.name, recipient, header + sealed))
        return out

    def seal(self, messages: Sequence[Message], *, final: bool = False) -> list[Envelope]:
        """Seal this node's messages of the next step (``step + 1``); once per step.

        Every active peer gets one batch: its messages (in order), or an empty marker.
        ``final=True`` tells the peers this node is done (it seals and opens nothing more).
        """
        self._ready("seal")
        if self._opened != self.step:
            raise ProtocolError(
                f"{self._where}: open the envelopes of step {self.step} before sealing step "
                f"{self.step + 1} (even when there are none)"
            )
        step = self.step + 1
        if step > _MAX_INDEX:
            raise ProtocolError(f"{self._where}: too many steps")
        active = self.active_peers
        per: dict[str, list[Message]] = {p: [] for p in active}
        for msg in messages:
            if msg.sender != self.name:
                raise ProtocolError(
                    f"{self._where}: step {step} produced a message from {msg.sender!r}"
                )
            if msg.recipient not in per:
                why = "is done" if msg.recipient in self._finished else "is not a participant"
                raise ProtocolError(
                    f"{self._where}: step {step} sends {msg.kind!r} to {msg.recipient!r}, which "
                    f"{why}"
                )
            per[msg.recipient].append(msg)
        flags = _FINAL if final else 0
        out: list[Envelope] = []
        for peer in active:
            msgs = per[peer]
            size = sum(len(m.body) for m in msgs)
            if size + ENVELOPE_OVERHEAD * (len(msgs) + size // CHUNK_BYTES + 1) > self.max_bytes:
                raise ProtocolError(
                    f"{self._where}: step {step} sends {size} bytes to {peer}, above the "
                    f"session's max_bytes = {self.max_bytes}"
                )
            if not msgs:
                out.extend(self._seal_one(peer, step, flags, 0, 0, "", b""))
            for seq, msg in enumerate(msgs):
                out.extend(self._seal_one(peer, step, flags, len(msgs), seq, msg.kind, msg.body))
        self.step = step
        self._final = final
        return out

    def open(self, envelopes: Sequence[Envelope]) -> list[Message]:
        """Open the envelopes addressed to this node produced at step ``self.step``.

        Returns the messages (peers in participant order, each peer's in the order sent);
        raises ``ProtocolError`` naming the sender (never any content) on anything the
        relay could have tampered with. Once per step.
        """
        self._ready("open")
        step = self.step
        where = f"{self._where}, step {step}"
        if self._opened == step and step > 0:
            raise ProtocolError(f"{where}: the envelopes of this step were already opened")
        total = 0
        for env in envelopes:
            total += len(env.body)
        if total > self.max_bytes:
            raise ProtocolError(
                f"{where}: {len(envelopes)} envelopes of {total} bytes, above max_bytes = "
                f"{self.max_bytes}; aborting"
            )
        if step == 0:
            if envelopes:
                raise ProtocolError(
                    f"{where}: {len(envelopes)} envelope(s) from {envelopes[0].sender!r} "
                    "before any step was sealed"
                )
            self._opened = 0
            return []
        # per sender: count, flags, {seq: (chunks, kind, {chunk: data})}
        batches: dict[str, tuple[int, int, dict[int, tuple[int, str, dict[int, bytes]]]]] = {}
        for env in envelopes:
            sender = env.sender
            if env.recipient != self.name:
                raise ProtocolError(
                    f"{where}: an envelope from {sender!r} is addressed to {env.recipient!r}, "
                    "not to this node (swapped by the relay); aborting"
                )
            if sender in self._finished:
                raise ProtocolError(
                    f"{where}: an envelope from {sender!r}, which finished at step "
                    f"{self._finished[sender]}; aborting"
                )
            if sender not in self._recv:
                raise ProtocolError(f"{where}: an envelope from {sender!r}, not a peer; aborting")
            body = env.body
            if not _HEADER.size + NONCE_BYTES + 1 + _TAG_BYTES <= len(body) <= ENVELOPE_MAX:
                raise ProtocolError(
                    f"{where}: an envelope from {sender} of {len(body)} bytes (malformed)"
                )
            header = body[: _HEADER.size]
            version, flags, h_step, count, seq, chunks, chunk = _HEADER.unpack(header)
            try:
                plain = aead_decrypt(
                    self._recv[sender], body[_HEADER.size :], self._ad(sender, self.name, header)
                )
            except CryptoError:
                raise ProtocolError(
                    f"{where}: an envelope from {sender} failed authentication (forged, "
                    "altered, or sealed for another session, sender or recipient); aborting"
                ) from None
            # authentic from here on: what is wrong is the relay's doing (or the sender's)
            if version != _VERSION or flags & ~_FINAL:
                raise ProtocolError(f"{where}: an envelope from {sender} of an unknown version")
            if body[_HEADER.size : _HEADER.size + NONCE_BYTES] != struct.pack(
                ">III", h_step, seq, chunk
            ):
                raise ProtocolError(f"{where}: an envelope from {sender} has a foreign nonce")
            if h_step != step:
                raise ProtocolError(
                    f"{where}: an envelope from {sender} belongs to step {h_step} (replayed or "
                    "delayed by the relay); aborting"
                )
            kind_len = plain[0]
            kind_raw, data = plain[1 : 1 + kind_len], plain[1 + kind_len :]
            ok = len(kind_raw) == kind_len <= KIND_MAX and (
                (count == 0 and seq == chunk == chunks == 0 and not plain[1:])
                or (seq < count and chunk < chunks)
            )
            if not ok:
                raise ProtocolError(f"{where}: an envelope from {sender} has a malformed header")
            got = batches.setdefault(sender, (count, flags, {}))
            if got[0] != count or got[1] != flags:
                raise ProtocolError(
                    f"{where}: envelopes from {sender} disagree on their batch (mixed from "
                    "different batches); aborting"
                )
            if count == 0:
                if 0 in got[2]:
                    raise ProtocolError(f"{where}: the empty marker of {sender} arrives twice")
                got[2][0] = (0, "", {})
                continue
            kind = kind_raw.decode("ascii", "replace")
            parts = got[2].setdefault(seq, (chunks, kind, {}))
            if parts[0] != chunks or parts[1] != kind:
                raise ProtocolError(
                    f"{where}: chunks of message {seq} from {sender} disagree on its size or "
                    "kind; aborting"
                )
            if chunk in parts[2]:
                raise ProtocolError(
                    f"{where}: chunk {chunk} of message {seq} from {sender} arrives twice "
                    "(replayed by the relay); aborting"
                )
            parts[2][chunk] = data
        messages: list[Message] = []
        newly_done: list[str] = []
        for peer in self.active_peers:
            if peer not in batches:
                raise ProtocolError(
                    f"{where}: nothing from {peer} (its envelopes were dropped by the relay); "
                    "aborting"
                )
            count, flags, seqs = batches[peer]
            if count and len(seqs) != count:
                raise ProtocolError(
                    f"{where}: {len(seqs)} of the {count} messages from {peer} arrived (the "
                    "others were dropped); aborting"
                )
            for seq in range(count):
                chunks, kind, pieces = seqs[seq]
                if len(pieces) != chunks:
                    raise ProtocolError(
                        f"{where}: {len(pieces)} of the {chunks} chunks of message {seq} from "
                        f"{peer} arrived (dropped by the relay); aborting"
                    )
                body = b"".join(pieces[i] for i in range(chunks))
                if chunks > 1 and any(len(pieces[i]) != CHUNK_BYTES for i in range(chunks - 1)):
                    raise ProtocolError(
                        f"{where}: message {seq} from {peer} is chunked irregularly"
                    )
                try:
                    messages.append(Message(peer, self.name, kind, body))
                except ProtocolError:
                    raise ProtocolError(
                        f"{where}: message {seq} from {peer} has an invalid kind"
                    ) from None
            if flags & _FINAL:
                newly_done.append(peer)
        for peer in newly_done:
            self._finished[peer] = step
        self._opened = step
        return messages


class Session:
    """A node's side of one vertical session: its ``Channel`` and its ``Party``.

    The node calls ``hello()`` and ``accept(hellos)`` at step 0; then for each step the
    aggregator ``deliver``s the envelopes addressed to it (in as many calls as it likes;
    bounded by the channel's ``max_bytes`` and ``max_envelopes``), and ``run(index)`` opens
    them, steps the party and seals its output. Any error aborts the session for good.
    ``deliver`` and ``run`` may be called from different threads (they take a lock).
    """

    def __init__(
        self, channel: Channel, party: Party, *, max_envelopes: int = DEFAULT_MAX_ENVELOPES
    ) -> None:
        if party.name != channel.name:
            raise ConfigError(
                f"vertical session: party {party.name!r} on the channel of {channel.name!r}"
            )
        if max_envelopes < 1:
            raise ConfigError(f"vertical session: max_envelopes must be >= 1, not {max_envelopes}")
        self.channel = channel
        self.party = party
        self.max_envelopes = max_envelopes
        self._buffer: list[Envelope] = []
        self._bytes = 0
        self.done = False
        self.result: Mapping[str, Any] | None = None
        self._failed = ""
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.channel.name

    def _check(self, what: str) -> None:
        where = self.channel._where
        if self._failed:
            raise ProtocolError(f"{where}: {what} after the session was aborted ({self._failed})")
        if self.done:
            raise ProtocolError(f"{where}: {what} after the session is done")

    def hello(self) -> bytes:
        return self.channel.hello()

    def accept(self, hellos: Mapping[str, bytes]) -> None:
        with self._lock:
            self._check("accept")
            try:
                self.channel.accept(hellos)
            except (ProtocolError, AuthenticationError) as e:
                self._abort(e)
                raise

    def _abort(self, error: Exception) -> None:
        self._failed = type(error).__name__
        self._buffer = []
        self._bytes = 0

    def deliver(self, envelopes: Sequence[Envelope]) -> None:
        """Buffer envelopes for the next ``run``; refuses (and aborts) beyond the bounds."""
        with self._lock:
            self._deliver(envelopes)

    def _deliver(self, envelopes: Sequence[Envelope]) -> None:
        self._check("deliver")
        where = self.channel._where
        try:
            for env in envelopes:
                if env.recipient != self.name:
                    raise ProtocolError(
                        f"{where}: relay delivered an envelope from {env.sender!r} for "
                        f"{env.recipient!r}; aborting"
                    )
                if env.sender not in self.channel.nodes or env.sender == self.name:
                    raise ProtocolError(
                        f"{where}: relay delivered an envelope from {env.sender!r}, not a peer"
                    )
                if len(env.body) > ENVELOPE_MAX:
                    raise ProtocolError(
                        f"{where}: an envelope from {env.sender} of {len(env.body)} bytes, above "
                        f"the {ENVELOPE_MAX} an envelope may have; aborting"
                    )
                if len(self._buffer) >= self.max_envelopes:
                    raise ProtocolError(
                        f"{where}: more than {self.max_envelopes} envelopes buffered for one step "
                        f"(the last from {env.sender}); aborting"
                    )
                if self._bytes + len(env.body) > self.channel.max_bytes:
                    raise ProtocolError(
                        f"{where}: more than max_bytes = {self.channel.max_bytes} buffered for "
                        f"one step (the last envelope from {env.sender}); aborting"
                    )
                self._buffer.append(env)
                self._bytes += len(env.body)
        except ProtocolError as e:
            self._abort(e)
            raise

    def run(self, index: int) -> tuple[list[Envelope], bool, Mapping[str, Any] | None]:
        """Open the buffered envelopes of step ``index - 1``, step the party, seal its output."""
        with self._lock:
            return self._run(index)

    def _run(self, index: int) -> tuple[list[Envelope], bool, Mapping[str, Any] | None]:
        self._check(f"run step {index}")
        inbox, self._buffer, self._bytes = self._buffer, [], 0
        try:
            if index != self.channel.step + 1:
                raise ProtocolError(
                    f"{self.channel._where}: asked to run step {index}, the next is "
                    f"{self.channel.step + 1}"
                )
            messages = self.channel.open(inbox)
            out = self.party.step(index, tuple(messages))
            envelopes = self.channel.seal(out.messages, final=out.done)
        except (ProtocolError, AuthenticationError) as e:
            self._abort(e)
            raise
        if out.done:
            self.done = True
            self.result = out.result
        return envelopes, out.done, out.result


Tamper = Callable[[int, list[Envelope]], list[Envelope]]


def relay_local(
    sessions: Mapping[str, Session],
    max_steps: int = 64,
    *,
    tamper_hellos: Callable[[dict[str, bytes]], Mapping[str, Mapping[str, bytes]]] | None = None,
    tamper: Tamper | None = None,
) -> dict[str, Mapping[str, Any] | None]:
    """The in-process model of the aggregator's loop; returns every party's result.

    Step 0: collect every hello, give every session all of them. Then step k = 1, 2, ...:
    deliver the envelopes produced at step k-1 to their recipients (envelopes for a session
    that is done are dropped), run every session that is not done. Test hooks playing a
    malicious aggregator: ``tamper_hellos(hellos) -> {recipient: hellos}`` chooses what each
    node is shown; ``tamper(step, envelopes) -> envelopes`` rewrites what is delivered at
    ``step``.
    """
    for key, s in sessions.items():
        if s.name != key:
            raise ConfigError(f"relay_local: the session under {key!r} is {s.name!r}'s")
    hellos = {name: s.hello() for name, s in sessions.items()}
    shown = tamper_hellos(dict(hellos)) if tamper_hellos else {n: hellos for n in sessions}
    for name, s in sessions.items():
        s.accept(shown[name])
    pending: list[Envelope] = []
    results: dict[str, Mapping[str, Any] | None] = {}
    for index in range(1, max_steps + 1):
        if tamper is not None:
            pending = tamper(index, pending)
        per: dict[str, list[Envelope]] = {}
        for env in pending:
            if env.recipient not in sessions:
                raise ProtocolError(f"relay_local: an envelope for unknown node {env.recipient!r}")
            per.setdefault(env.recipient, []).append(env)
        produced: list[Envelope] = []
        for name, s in sessions.items():
            if s.done:
                continue
            s.deliver(per.get(name, []))
            envelopes, done, result = s.run(index)
            produced.extend(envelopes)
            if done:
                results[name] = result
        pending = produced
        if all(s.done for s in sessions.values()):
            return {name: results[name] for name in sessions}
    raise ProtocolError(f"relay_local: the sessions were not all done after {max_steps} steps")
