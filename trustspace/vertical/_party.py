"""The step-machine types every vertical protocol implements (pure, no I/O).

A protocol is one ``Party`` per node. A driver (the aggregator, or ``run_local`` in tests)
calls ``step(index, inbox)`` on every party for index 1, 2, ... and hands each party the
messages addressed to it that were produced at the previous step, until every party is done.
Step 0 is the channel hello, handled by the session layer (``trustspace.vertical.channel``),
so a ``Party`` never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trustspace.errors import ProtocolError

__all__ = ["KIND_MAX", "Message", "Party", "StepOut", "run_local"]

KIND_MAX = 64
"""The longest message kind, in characters (ASCII printable)."""


@dataclass(frozen=True)
class Message:
    """A logical node-to-node message, before sealing or after opening.

    ``kind`` names the message (e.g. ``"psi.blind/2"``): ASCII printable, 1 to 64 characters.
    After ``Channel.open`` the sender is the authenticated peer.
    """

    sender: str
    recipient: str
    kind: str
    body: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.body, bytes):
            raise ProtocolError(f"message {self.kind!r}: the body must be bytes")
        if not self.kind or len(self.kind) > KIND_MAX or not all(" " < c <= "~" for c in self.kind):
            raise ProtocolError(
                f"message kind of {len(self.kind)} characters: a kind must be 1 to {KIND_MAX} "
                "printable ASCII characters without spaces"
            )
        if not self.sender or not self.recipient:
            raise ProtocolError(f"message {self.kind!r}: sender and recipient must be named")
        if self.sender == self.recipient:
            raise ProtocolError(f"message {self.kind!r}: {self.sender!r} sends to itself")

    def __repr__(self) -> str:  # never the body
        return (
            f"Message(sender={self.sender!r}, recipient={self.recipient!r}, kind={self.kind!r}, "
            f"body=<{len(self.body)} bytes>)"
        )


@dataclass(frozen=True)
class StepOut:
    """What a party returns from one step: messages to send, whether it is done, its result.

    ``result`` is a public, JSON-able result (e.g. ``{"size": 123}``), set when done.
    """

    messages: tuple[Message, ...] = ()
    done: bool = False
    result: Mapping[str, Any] | None = None


class Party(Protocol):
    """One node's side of a protocol.

    ``step(index, inbox)``: ``index`` starts at 1; ``inbox`` holds the messages addressed to
    this party produced at step ``index - 1``, opened and authenticated (``sender`` is the
    authenticated peer). A party raises ``ProtocolError`` on anything unexpected (wrong step,
    missing or extra message, wrong sizes), never with data values in the text.
    """

    name: str

    def step(self, index: int, inbox: Sequence[Message]) -> StepOut: ...


def run_local(
    parties: Mapping[str, Party], max_steps: int = 64
) -> dict[str, Mapping[str, Any] | None]:
    """In-process driver for tests: steps every party until all are done; returns results.

    Messages go unsealed from the sender's output at step k to the recipient's inbox at step
    k+1. A party that is done is not stepped again; a message to a done or unknown party, a
    message whose sender is not the party that produced it, or more than ``max_steps`` steps
    raise ``ProtocolError``.
    """
    for key, party in parties.items():
        if party.name != key:
            raise ProtocolError(f"run_local: the party under {key!r} is named {party.name!r}")
    done: dict[str, bool] = dict.fromkeys(parties, False)
    results: dict[str, Mapping[str, Any] | None] = dict.fromkeys(parties)
    inboxes: dict[str, list[Message]] = {name: [] for name in parties}
    for index in range(1, max_steps + 1):
        outbox: dict[str, list[Message]] = {name: [] for name in parties}
        for name, party in parties.items():
            if done[name]:
                continue
            out = party.step(index, tuple(inboxes[name]))
            for msg in out.messages:
                if msg.sender != name:
                    raise ProtocolError(
                        f"run_local step {index}: {name!r} produced a message from {msg.sender!r}"
                    )
                if msg.recipient not in parties:
                    raise ProtocolError(
                        f"run_local step {index}: {name!r} sent {msg.kind!r} to unknown "
                        f"party {msg.recipient!r}"
                    )
                outbox[msg.recipient].append(msg)
            if out.done:
                done[name] = True
                results[name] = out.result
        for name, msgs in outbox.items():
            if msgs and done[name]:
                raise ProtocolError(
                    f"run_local step {index}: {len(msgs)} message(s) for {name!r}, which is done"
                )
        inboxes = outbox
        if all(done.values()):
            return results
    raise ProtocolError(f"run_local: the parties were not all done after {max_steps} steps")
