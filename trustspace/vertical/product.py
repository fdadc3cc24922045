"""Secure two-node products of a vertical round into additive shares mod 2^64 (Paillier).

For every term touching two nodes (``terms.plan_round``), the **encryptor** E encrypts its
factor row by row under its own fresh Paillier key (2048 bits by default; the private key never
leaves the party) and sends the ciphertexts to the **evaluator** V, which combines them with its
own factor into one ciphertext per entry (or per group of packed entries) of the term:

- V one-hot (bins, grid, octaves, cells, indicators): the product of the ciphertexts of the
  rows in each of its slots (one modular multiplication per row, no exponentiation);
- V dense (a cross-node moment): ``prod_i c_i^(b_i)`` with V's values in fixed point as signed
  exponents, by a bucketed multi-exponentiation (Pippenger), negatives through one inverse.

E's one-hot factor is packed: slot ``k`` of a row's plaintext holds 1 at bit ``w*k``, so one
ciphertext carries ``floor((|n| - 3) / w)`` slots and V's slot product yields a whole row of a
table at once; a dense factor is one fixed-point value per row. V adds a statistical mask R to
every slot (each slot's mask has 40 bits more than the slot sum's public bound: the row count
for counts, ``2^(61 - frac_bits)`` at the product's scale for moments), re-randomises (the mask
is added as a fresh encryption) and returns the ciphertexts; E decrypts ``S + R``. Both then
truncate their integer share to the term's fixed point (``Round.units``): E takes
``floor((S + R) * u)``, V ``-floor(R * u)`` (mod 2^64), whose sum is ``floor(S * u)`` or one
more; counts are exact. So ``share_E + share_V`` is within one unit of ``rnd.encode(total)``.

Fixed point of dense factors (public, from the term's frac_bits f and the row count n, never
from the data): E encodes ``a_i * 2^FA`` and V ``b_i * 2^FB``; with one dense factor
``FA = f + bitlen(n) + 3`` (the error is at most n * 2^-(FA+1) < 2^-(f+3)), with two
``FA = f + bitlen(n) + 3 + 256`` and ``FB = f + bitlen(n) + 3 + 40``: the error stays below
``2^-(f+2)`` while ``|a_i| <= 2^40`` and ``|b_i| <= 2^256``. A value too large for the
plaintext space (or V's exponent budget) raises EncodingOverflow at its node, naming the term.

Encryptor rule: see ``plan_round`` (the dense factor encrypts against a one-hot one; of two
one-hot factors the one with fewer slots). Reuse: E encrypts each distinct factor once per
round, and every evaluator applies it to every term that uses it (e.g. a label indicator
used by ten binned features); with ``cache=`` (one per view) and the same key pair, later
rounds of the view reuse it too.

Security: against a semi-honest peer, E learns only ``S + R`` (statistically hiding S) and V
only ciphertexts. A malicious encryptor could encrypt other plaintexts than its factor (e.g.
distinct powers of two per row) and learn V's per-row slots; like FATE's and SecretFlow's HE
binning, this protocol assumes the nodes follow it (the relaying aggregator may not: it sees
sealed envelopes only, see ``trustspace.vertical.channel``).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

from trustspace.crypto.paillier import PrivateKey, PublicKey, generate_keypair
from trustspace.errors import ConfigError, EncodingOverflow, InvalidCiphertext, ProtocolError
from trustspace.stats import Round
from trustspace.vertical._party import Message, StepOut
from trustspace.vertical.terms import (
    Dense,
    Factor,
    OneHot,
    RoundPlan,
    TermPlan,
    _check_factor,
    combine,
    factor_shape,
    term_strides,
)

__all__ = ["MASK_BITS", "ProductParty", "multiexp"]

#: Statistical hiding of a slot sum: its mask has this many bits more than its bound.
MASK_BITS = 40
#: Guard bits of dense fixed point (module docstring): encryptor, evaluator.
ENC_GUARD = 256
EV_GUARD = 40
#: Most bits of an evaluator's fixed-point exponent (its multi-exponentiation cost grows with it).
EV_MAX_BITS = 512
_MAGIC = b"TSVP\x01"
_HEAD = struct.Struct(">QH")  # rows, ciphertexts per row

_MPZ = gmpy2.mpz


@dataclass(frozen=True)
class _Spec:
    """The public layout of one two-node term's product (both sides derive it alike)."""

    term: int
    enc: str
    ev: str
    enc_shape: tuple[str, int]
    ev_shape: tuple[str, int]
    enc_stride: int
    ev_stride: int
    slot_bits: int  # one-hot encryptor: width of a packed slot; 0 for a dense one
    slots: int  # slots per ciphertext (1 for a dense encryptor)
    chunks: int  # ciphertexts per row
    fa: int  # dense encryptor's fixed-point bits (else 0)
    fb: int  # dense evaluator's fixed-point bits (else 0)
    bound_bits: int  # |slot sum| < 2^bound_bits at the product's scale
    group: tuple[Any, ...]  # what the encrypted factor depends on (shared between terms)

    @property
    def outputs(self) -> int:
        return self.ev_shape[1] * self.chunks


def _units_exp(rnd: Round, term: int) -> int:
    t = rnd.terms[term]
    return math.ceil(math.log2(t.scale)) if t.scale else t.frac_bits


def _units(rnd: Round, term: int) -> Fraction:
    t = rnd.terms[term]
    return Fraction(t.scale) if t.scale else Fraction(2) ** t.frac_bits


def _factor_key(rnd: Round, plan: RoundPlan, term: int, node: str) -> tuple[Any, ...]:
    """What ``node``'s factor of ``term`` depends on (public): equal keys, equal factors."""
    t = rnd.terms[term]
    mine = [(j, c) for j, c in enumerate(t.columns) if plan.owners.get(c) == node]
    cols = tuple(c for _, c in mine)
    if t.kind == "moment":
        if factor_shape(rnd, plan.owners, term, node)[0] == "onehot":
            return ("indicator", tuple(sorted(cols)))
        return ("moment", tuple((c, t.powers[j], t.centers[j]) for j, c in mine), t.clamp)
    if not mine:
        return ("indicator", ())
    if t.kind == "cells":
        return ("cells", tuple((c, t.levels[j]) for j, c in mine))
    return (t.kind, cols, t.start, t.width, t.nbins, t.edges, t.clamp)


def _spec(plan: RoundPlan, tp: TermPlan, n: int, nbits: int) -> _Spec:
    rnd, owners = plan.round, plan.owners
    assert tp.encryptor is not None and tp.evaluator is not None
    e, v = tp.encryptor, tp.evaluator
    es, vs = factor_shape(rnd, owners, tp.index, e), factor_shape(rnd, owners, tp.index, v)
    strides = dict(zip(tp.nodes, term_strides(rnd, owners, tp.index, tp.nodes), strict=True))
    lb = max(n, 1).bit_length()
    fexp = _units_exp(rnd, tp.index)
    if es[0] == "onehot":
        bound = lb  # a slot counts at most n rows
        slot_bits = bound + MASK_BITS + 1
        slots = max(1, (nbits - 3) // slot_bits)
        if slot_bits > nbits - 3:  # pragma: no cover - needs 2^(nbits) rows
            raise ConfigError("vertical product: too many rows for the Paillier key")
        chunks = -(-es[1] // slots)
        fa = fb = 0
    else:
        slot_bits, slots, chunks = 0, 1, 1
        if vs[0] == "dense":
            fa, fb = fexp + lb + 3 + ENC_GUARD, fexp + lb + 3 + EV_GUARD
        else:
            fa, fb = fexp + lb + 3, 0
        bound = 61 - fexp + fa + fb + 1
        if bound + MASK_BITS + 1 > nbits - 4:
            raise EncodingOverflow(
                f"round {rnd.index} term {tp.index}: the declared range does not fit a "
                f"{nbits}-bit Paillier key; use a larger key"
            )
    group = (_factor_key(rnd, plan, tp.index, e), es, slot_bits, slots, chunks, fa)
    return _Spec(
        tp.index, e, v, es, vs, strides[e], strides[v], slot_bits, slots, chunks, fa, fb,
        bound, group,
    )  # fmt: skip


def multiexp(bases: Sequence[Any], exps: Sequence[int], mod: Any) -> Any:
    """``prod bases[i] ** exps[i] mod mod`` for exponents >= 0 (Pippenger's bucket method:
    about ``bits / w * (len + 2^(w+1))`` multiplications instead of ``1.5 * bits * len``).

    >>> multiexp([3, 5, 7], [4, 0, 9], 1000003) == 3**4 * 7**9 % 1000003
    True
    """
    pairs = [(_MPZ(b), int(x)) for b, x in zip(bases, exps, strict=True) if x]
    if not pairs:
        return _MPZ(1)
    if any(x < 0 for _, x in pairs):
        raise ConfigError("multiexp: exponents must be >= 0")
    bits = max(x.bit_length() for _, x in pairs)
    w = max(1, min(14, len(pairs).bit_length() - 5))
    mask = (1 << w) - 1
    m = _MPZ(mod)
    result = _MPZ(1)
    top = -(-bits // w) * w
    for shift in range(top - w, -1, -w):
        if shift != top - w:
            for _ in range(w):
                result = result * result % m
        buckets: dict[int, Any] = {}
        for b, x in pairs:
            d = (x >> shift) & mask
            if d:
                got = buckets.get(d)
                buckets[d] = b if got is None else got * b % m
        run, acc = _MPZ(1), _MPZ(1)
        for d in range(mask, 0, -1):
            got = buckets.get(d)
            if got is not None:
                run = run * got % m
            if run != 1:
                acc = acc * run % m
        result = result * acc % m
    return result


def _ev_bits(nbits: int) -> int:
    """Most bits of an evaluator's exponent under an ``nbits`` key (the rest is E's)."""
    return min(EV_MAX_BITS, nbits // 4)


def _fixed(values: npt.NDArray[np.float64], bits: int, limit: int, what: str) -> list[int]:
    """``round(v * 2^bits)`` exactly, as Python ints below ``2^limit`` in magnitude."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(np.ldexp(values, bits))
    if not np.all(np.isfinite(scaled)) or (
        scaled.size and limit < 1024 and float(np.max(np.abs(scaled))) >= math.ldexp(1.0, limit)
    ):
        raise EncodingOverflow(f"{what}: a value exceeds the fixed-point range of the product")
    return [int(x) for x in scaled.tolist()]


class ProductParty:
    """One node's side of the secure products of one round (implements ``Party``).

    Args:
        name: this node.
        plan: the round's plan (``plan_round``), identical at every node.
        factors: this node's factors (``local_factors``), one per term (None: not touching it).
        key_bits: size of the fresh Paillier key this node encrypts under (if it encrypts).
        keypair: a key pair to use instead of a fresh one (e.g. one per session).
        rng: random bytes for the masks (the OS CSPRNG by default).
        cache: encrypted factors kept across rounds of one aligned view (one dict per view,
            with the same ``keypair`` every round): a factor this node encrypted in an earlier
            round (same key, same public description, same filter part, same rows) is sent
            again instead of re-encrypted. The evaluator's masks and re-randomisation are
            fresh every round, so a reused encryption reveals only that the factor is the same,
            which the round descriptions already say.

    Steps: 1, encryptors send their public key and encrypted factors; 2, evaluators return
    masked products; 3, encryptors decrypt. A party is done after its last role; result None.
    ``share`` is then this node's uint64 share of ``rnd.encode(total)`` for every entry.
    """

    def __init__(
        self,
        name: str,
        plan: RoundPlan,
        factors: list[Factor | None],
        *,
        key_bits: int = 2048,
        keypair: tuple[PublicKey, PrivateKey] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        cache: MutableMapping[tuple[Any, ...], bytes] | None = None,
    ) -> None:
        self.name = name
        self.plan = plan
        rnd = plan.round
        if len(factors) != len(plan.terms):
            raise ConfigError(
                f"node {name!r}: {len(factors)} factors for {len(plan.terms)} terms of round "
                f"{rnd.index}"
            )
        lengths = {
            (f.values if isinstance(f, Dense) else f.index).shape[0]
            for f in factors
            if f is not None
        }
        if len(lengths) > 1:
            raise ConfigError(f"node {name!r}: its factors cover different numbers of rows")
        self.n = lengths.pop() if lengths else 0
        self.factors: list[Factor | None] = []
        for tp, f in zip(plan.terms, factors, strict=True):
            where = f"node {name!r}, round {rnd.index} term {tp.index}"
            if name in tp.nodes:
                shape = factor_shape(rnd, plan.owners, tp.index, name)
                self.factors.append(_check_factor(f, shape, self.n, where))
            elif f is not None:
                raise ConfigError(f"{where}: a factor for a term that does not touch this node")
            else:
                self.factors.append(None)
        self.rng = rng
        self._cache = cache
        self.enc_terms = [tp for tp in plan.terms if tp.encryptor == name]
        self.ev_terms = [tp for tp in plan.terms if tp.evaluator == name]
        self._keypair = keypair
        self._key_bits = key_bits
        self._share = np.zeros(rnd.size, dtype=np.uint64)
        self._local_shares()
        self._last = 3 if self.enc_terms else (2 if self.ev_terms else 1)
        self._done = False
        self._next = 1

    # ------------------------------------------------------------------ public

    @property
    def share(self) -> npt.NDArray[np.uint64]:
        """This node's additive share (mod 2^64) of the encoded round total."""
        if not self._done:
            raise ProtocolError(f"node {self.name!r}: the product is not done; no share yet")
        return self._share.copy()

    def step(self, index: int, inbox: Sequence[Message]) -> StepOut:
        """Run step ``index`` (see the class); ProtocolError on anything unexpected."""
        if self._done or index != self._next:
            raise ProtocolError(
                f"node {self.name!r}: secure product step {index} out of order "
                f"(expected {self._next if not self._done else 'none: done'})"
            )
        self._next += 1
        for m in inbox:
            if m.recipient != self.name:
                raise ProtocolError(f"node {self.name!r}: got {m.kind!r} addressed to another")
        if index == 1:
            self._expect_none(inbox, 1)
            out = self._encrypt()
        elif index == 2:
            out = self._evaluate(inbox)
        else:
            self._decrypt(inbox)
            out = []
        done = index >= self._last
        self._done = done
        return StepOut(tuple(out), done, None)

    # ------------------------------------------------------------------ helpers

    def _expect_none(self, inbox: Sequence[Message], index: int) -> None:
        if inbox:
            raise ProtocolError(
                f"node {self.name!r}: {len(inbox)} unexpected message(s) at secure product "
                f"step {index} (first {inbox[0].kind!r} from {inbox[0].sender!r})"
            )

    def _local_shares(self) -> None:
        rnd = self.plan.round
        local = np.zeros(rnd.size, dtype=np.float64)
        mine = []
        for tp in self.plan.terms:
            if tp.nodes == (self.name,):
                f = self.factors[tp.index]
                assert f is not None
                local[rnd.term_slice(tp.index)] = combine(rnd, self.plan.owners, tp, [f], self.n)
                mine.append(rnd.term_slice(tp.index))
        if mine:
            enc = rnd.encode(local)
            for sl in mine:
                self._share[sl] = enc[sl]

    def _keys(self) -> tuple[PublicKey, PrivateKey]:
        if self._keypair is None:
            self._keypair = generate_keypair(self._key_bits)
        return self._keypair

    def _groups(self, specs: Sequence[_Spec]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
        """Per (encryptor, evaluator): its distinct factor groups in order of first term."""
        out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for s in specs:
            gs = out.setdefault((s.enc, s.ev), [])
            if s.group not in gs:
                gs.append(s.group)
        return out

    def _plaintexts(self, spec: _Spec, f: Factor, pk: PublicKey) -> list[int]:
        rnd = self.plan.round
        if isinstance(f, Dense):
            limit = pk.bits - 5 - max(self.n, 1).bit_length()
            if spec.ev_shape[0] == "dense":
                limit -= _ev_bits(pk.bits)
            return _fixed(f.values, spec.fa, limit, f"node {self.name!r}, round {rnd.index} "
                          f"term {spec.term}")  # fmt: skip
        out = []
        w, slots, chunks = spec.slot_bits, spec.slots, spec.chunks
        for k in f.index.tolist():
            for h in range(chunks):
                out.append(1 << (w * (k - h * slots)) if 0 <= k - h * slots < slots else 0)
        return out

    def _encrypt(self) -> list[Message]:
        if not self.enc_terms:
            return []
        pk, sk = self._keys()
        specs = [_spec(self.plan, tp, self.n, pk.bits) for tp in self.enc_terms]
        self._enc_specs = specs
        msgs: list[Message] = []
        cache = self._cache if self._cache is not None else {}
        part = self.plan.filters.get(self.name)
        for (_, ev), groups in self._groups(specs).items():
            msgs.append(Message(self.name, ev, "prod.key", pk.to_bytes()))
            for g, group in enumerate(groups):
                ckey = (pk.fingerprint, self.n, part, group)
                body = cache.get(ckey)
                if body is None:
                    spec = next(s for s in specs if s.group == group)
                    f = self.factors[spec.term]
                    assert f is not None
                    ms = self._plaintexts(spec, f, pk)
                    cts = sk.encrypt_many(ms, frac_bits=0)
                    width = pk.ciphertext_length
                    body = b"".join(
                        [
                            _MAGIC,
                            _HEAD.pack(self.n, spec.chunks),
                            *(c.ciphertext().to_bytes(width, "big") for c in cts),
                        ]
                    )
                    cache[ckey] = body
                msgs.append(Message(self.name, ev, f"prod.enc/{g}", body))
        return msgs

    def _evaluate(self, inbox: Sequence[Message]) -> list[Message]:
        rnd = self.plan.round
        peers = {str(tp.encryptor) for tp in self.ev_terms}
        keys: dict[str, PublicKey] = {}
        encs: dict[tuple[str, str], Message] = {}
        results: list[Message] = []
        for m in inbox:
            if m.sender not in peers:
                raise ProtocolError(
                    f"node {self.name!r}: unexpected {m.kind!r} from {m.sender!r} at secure "
                    "product step 2"
                )
            if m.kind == "prod.key":
                if m.sender in keys:
                    raise ProtocolError(f"node {self.name!r}: {m.sender!r} sent its key twice")
                try:
                    keys[m.sender] = PublicKey.from_bytes(m.body)
                except (ConfigError, ValueError, TypeError) as e:
                    raise ProtocolError(
                        f"node {self.name!r}: {m.sender!r} sent an unusable Paillier key ({e})"
                    ) from None
            elif m.kind.startswith("prod.enc/"):
                if (m.sender, m.kind) in encs:
                    raise ProtocolError(f"node {self.name!r}: {m.kind!r} from {m.sender!r} twice")
                encs[(m.sender, m.kind)] = m
            else:
                raise ProtocolError(
                    f"node {self.name!r}: unexpected {m.kind!r} from {m.sender!r} at secure "
                    "product step 2"
                )
        missing = sorted(p for p in peers if p not in keys)
        if missing:
            raise ProtocolError(f"node {self.name!r}: no Paillier key from {', '.join(missing)}")
        specs = [_spec(self.plan, tp, self.n, keys[str(tp.encryptor)].bits) for tp in self.ev_terms]
        groups = self._groups(specs)
        expected = {(e, f"prod.enc/{g}") for (e, _), gs in groups.items() for g in range(len(gs))}
        if set(encs) != expected:
            extra = sorted(set(encs) - expected)
            lost = sorted(expected - set(encs))
            raise ProtocolError(
                f"node {self.name!r}: encrypted factors do not match the round's plan "
                f"(missing {lost}, unexpected {extra})"
            )
        cts_of: dict[tuple[str, tuple[Any, ...]], list[Any]] = {}
        for (enc, _), gs in groups.items():
            for g, group in enumerate(gs):
                spec = next(s for s in specs if s.group == group and s.enc == enc)
                msg = encs[(enc, f"prod.enc/{g}")]
                cts_of[(enc, group)] = self._parse_enc(msg, keys[enc], spec)
        for spec in specs:
            pk = keys[spec.enc]
            cts = cts_of[(spec.enc, spec.group)]
            prods = self._combine(spec, cts, pk)
            body, mine = self._mask(spec, prods, pk, rnd)
            self._share[rnd.term_slice(spec.term)] = mine
            results.append(Message(self.name, spec.enc, f"prod.res/{spec.term}", body))
        return results

    def _parse_enc(self, m: Message, pk: PublicKey, spec: _Spec) -> list[Any]:
        who = f"node {self.name!r}: {m.kind!r} from {m.sender!r}"
        body = m.body
        head = len(_MAGIC) + _HEAD.size
        if not body.startswith(_MAGIC) or len(body) < head:
            raise ProtocolError(f"{who} is not an encrypted factor")
        rows, chunks = _HEAD.unpack_from(body, len(_MAGIC))
        if rows != self.n or chunks != spec.chunks:
            raise ProtocolError(
                f"{who} covers {rows} rows x {chunks} ciphertexts; this node expects "
                f"{self.n} x {spec.chunks} (the nodes' aligned views differ)"
            )
        width = pk.ciphertext_length
        if len(body) - head != rows * chunks * width:
            raise ProtocolError(
                f"{who} has {len(body) - head} ciphertext bytes, expected {rows * chunks * width}"
            )
        nsq, n = pk.nsq, pk.n
        cts = [
            _MPZ(int.from_bytes(body[o : o + width], "big")) for o in range(head, len(body), width)
        ]
        check = _MPZ(1)
        for c in cts:
            if not 0 < c < nsq:
                raise ProtocolError(f"{who}: a ciphertext is out of range for its key")
            check = check * c % n
        if gmpy2.gcd(check, n) != 1:  # a product of units is a unit: one gcd checks them all
            raise ProtocolError(f"{who}: a ciphertext is not a unit for its key")
        return cts

    def _combine(self, spec: _Spec, cts: list[Any], pk: PublicKey) -> list[Any]:
        """One ciphertext per (evaluator slot, chunk): V's combination of E's ciphertexts."""
        f = self.factors[spec.term]
        nsq, ch = pk.nsq, spec.chunks
        if isinstance(f, OneHot):
            out = [_MPZ(1)] * (f.size * ch)
            idx = f.index
            order = np.argsort(idx, kind="stable")
            bounds = np.searchsorted(idx[order], np.arange(f.size + 1))
            rows = order.tolist()
            for j in range(f.size):
                sel = rows[bounds[j] : bounds[j + 1]]
                for h in range(ch):
                    acc = _MPZ(1)
                    for i in sel:
                        acc = acc * cts[i * ch + h] % nsq
                    out[j * ch + h] = acc
            return out
        assert isinstance(f, Dense)
        what = f"node {self.name!r}, round {self.plan.round.index} term {spec.term}"
        exps = _fixed(f.values, spec.fb, _ev_bits(pk.bits), what)
        pos = multiexp(cts, [x if x > 0 else 0 for x in exps], nsq)
        neg = multiexp(cts, [-x if x < 0 else 0 for x in exps], nsq)
        return [pos * gmpy2.invert(neg, nsq) % nsq]

    def _mask(
        self, spec: _Spec, prods: list[Any], pk: PublicKey, rnd: Round
    ) -> tuple[bytes, npt.NDArray[np.uint64]]:
        """Masked, re-randomised ciphertexts for E, and this node's share of the term."""
        t = rnd.terms[spec.term]
        u = _units(rnd, spec.term) / (Fraction(2) ** (spec.fa + spec.fb))
        rbits = spec.bound_bits + MASK_BITS
        share = [0] * t.size
        width = pk.ciphertext_length
        parts = []
        k_enc = spec.enc_shape[1] if spec.enc_shape[0] == "onehot" else 1
        for o, c in enumerate(prods):
            j, h = divmod(o, spec.chunks)
            packed = 0
            for s in range(spec.slots):
                i = h * spec.slots + s
                r = int.from_bytes(self.rng((rbits + 7) // 8), "big") >> (-rbits % 8)
                packed |= r << (spec.slot_bits * s)
                if i < k_enc:
                    e = i * spec.enc_stride + j * spec.ev_stride
                    share[e] = -((r * u.numerator) // u.denominator)
            masked = c * _MPZ(pk.raw_encrypt(packed)) % pk.nsq  # + R, with fresh noise
            parts.append(int(masked).to_bytes(width, "big"))
        return b"".join(parts), np.array([x % 2**64 for x in share], dtype=np.uint64)

    def _decrypt(self, inbox: Sequence[Message]) -> None:
        if not self.enc_terms:
            self._expect_none(inbox, 3)
            return
        rnd = self.plan.round
        _, sk = self._keys()
        pk = sk.public_key
        specs = {s.term: s for s in self._enc_specs}
        got: dict[int, Message] = {}
        for m in inbox:
            t = m.kind.removeprefix("prod.res/")
            term = int(t) if m.kind.startswith("prod.res/") and t.isdigit() else -1
            spec = specs.get(term)
            if spec is None or m.sender != spec.ev or term in got:
                raise ProtocolError(
                    f"node {self.name!r}: unexpected {m.kind!r} from {m.sender!r} at secure "
                    "product step 3"
                )
            got[term] = m
        lost = sorted(set(specs) - set(got))
        if lost:
            raise ProtocolError(
                f"node {self.name!r}: no masked product for term(s) {lost} from their evaluators"
            )
        width = pk.ciphertext_length
        for term, m in got.items():
            spec = specs[term]
            if len(m.body) != spec.outputs * width:
                raise ProtocolError(
                    f"node {self.name!r}: {m.kind!r} from {m.sender!r} has {len(m.body)} bytes, "
                    f"expected {spec.outputs * width}"
                )
            try:
                cts = [
                    pk.ciphertext_from_bytes(m.body[o : o + width])
                    for o in range(0, len(m.body), width)
                ]
            except InvalidCiphertext:
                raise ProtocolError(
                    f"node {self.name!r}: {m.kind!r} from {m.sender!r} holds an invalid ciphertext"
                ) from None
            ms = [sk.raw_decrypt(c) for c in cts]
            size = rnd.terms[term].size
            u = _units(rnd, term) / (Fraction(2) ** (spec.fa + spec.fb))
            share = [0] * size
            k_enc = spec.enc_shape[1] if spec.enc_shape[0] == "onehot" else 1
            half = int(pk.n) // 2
            smask = (1 << spec.slot_bits) - 1
            for o, x in enumerate(ms):
                j, h = divmod(o, spec.chunks)
                for s in range(spec.slots):
                    i = h * spec.slots + s
                    if i >= k_enc:
                        break
                    if spec.slot_bits:
                        v = (x >> (spec.slot_bits * s)) & smask
                    else:
                        v = x - int(pk.n) if x > half else x
                    e = i * spec.enc_stride + j * spec.ev_stride
                    share[e] = (v * u.numerator) // u.denominator
            self._share[rnd.term_slice(term)] = np.array(
                [x % 2**64 for x in share], dtype=np.uint64
            )
