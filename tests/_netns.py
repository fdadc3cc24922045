"""Hosts on this machine: one Linux network namespace per host, joined by a router namespace,
with latency and packet loss on every link (``tests/test_netns.py``).

Topology (``R`` is a random id per run, ``X`` a random free ``10.213.X.0/24``)::

    ts-R-HOST (one per host)   eth0 10.213.X.i/24 --veth-- vi  \\
    root namespace (analyst)   tsRa 10.213.X.100/24 --veth-- va  -- ts-R-rt (router)

The router forwards between the hosts (proxy ARP, host routes), so every packet between two
hosts, or between a host and the analyst in the root namespace, crosses the router once. The
impairment is ``tc qdisc add dev eth0 root netem delay D loss L%`` on every host's link (and
the analyst's) when the kernel has ``sch_netem``; on a kernel without it (this machine's
``CONFIG_NET_SCH_NETEM`` is unset) every forwarded packet is routed through a TUN device in the
router instead, where ``tests/_netem_tun.py`` drops L % and delays the rest by D: the same
one-way delay and loss per direction, at the packet level (TCP sees real loss and
retransmits). ``NetnsSpace.impairment`` says which one ran.

Everything is torn down in ``close()`` (processes first, then namespaces and the analyst's
link), which ``with`` calls on any exit, including Ctrl-C, and an ``atexit`` hook calls if
the interpreter ends another way. Names are unique per run (``ts-<6 hex>-...``).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TUN_SCRIPT = Path(__file__).resolve().with_name("_netem_tun.py")
ROUTER = "rt"
ANALYST_OCTET = 100
STOP_TIMEOUT_S = 10.0
_TUN_DEV = "imp0"
_TUN_TABLE = "100"


class NetnsUnavailable(Exception):
    """This machine does not let us make network namespaces (the reason is the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def _free_subnet() -> str:
    """A random 10.213.X (as "10.213.X") that no route or address on this machine overlaps."""
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    nets = []
    for word in used.split():
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(64):
        third = secrets.randbelow(256)
        cand = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(cand.overlaps(n) for n in nets if n.prefixlen > 0):
            return f"10.213.{third}"
    raise RuntimeError("no free 10.213.X.0/24 on this machine (64 random picks all in use)")


class NetnsSpace:
    """Hosts in their own network namespaces, with ``delay_ms`` and ``loss_pct`` per direction.

    Args:
        hosts: host names (``[a-z0-9]``, at most 8 characters); host ``i`` (from 1) gets
            ``10.213.X.i``.
        delay_ms, loss_pct: the impairment of every packet between two hosts (one way).
    """

    def __init__(self, hosts: Sequence[str], *, delay_ms: float = 20.0, loss_pct: float = 1.0):
        if not hosts or len(hosts) >= ANALYST_OCTET:
            raise ValueError(f"between 1 and {ANALYST_OCTET - 1} hosts, got {len(hosts)}")
        self.run_id = secrets.token_hex(3)
        self.hosts = tuple(hosts)
        self.delay_ms = delay_ms
        self.loss_pct = loss_pct
        self.subnet = ""
        #: host name -> its address; "analyst" -> the root namespace's address
        self.addresses: dict[str, str] = {}
        #: "netem" or "tun (...why...)": how the delay and loss are made
        self.impairment = ""
        self._made: list[str] = []  # namespaces created, in order
        self._root_link = f"ts{self.run_id}a"
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    # ------------------------------------------------------------------ names
    def ns(self, host: str) -> str:
        """The namespace name of ``host`` (or of the router, ``"rt"``)."""
        return f"ts-{self.run_id}-{host}"

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> NetnsSpace:
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, host: str) -> str:
        name = self.ns(host)
        proc = _ip("netns", "add", name, check=False)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"`ip netns add {name}` failed: {proc.stderr.strip()}")
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _sysctl(self, ns: str, values: Mapping[str, str]) -> None:
        script = "; ".join(f"echo {v} > /proc/sys/net/ipv4/{k}" for k, v in values.items())
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True, timeout=30)

    def _setup(self) -> None:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (CAP_NET_ADMIN); not root")
        self.subnet = _free_subnet()
        rt = self._add_ns(ROUTER)
        self._sysctl(
            rt,
            {"ip_forward": "1", "conf/all/rp_filter": "0", "conf/default/rp_filter": "0"},
        )
        links: list[tuple[str, str, str]] = []  # (router side, namespace of the far end, far end)
        for i, host in enumerate(self.hosts, start=1):
            ns = self._add_ns(host)
            made = _ip(
                "-n", rt, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns, check=False,
            )  # fmt: skip
            if made.returncode != 0:
                raise NetnsUnavailable(f"cannot create a veth pair: {made.stderr.strip()}")
            addr = f"{self.subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.addresses[host] = addr
            links.append((f"v{i}", ns, "eth0"))
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "va", "netns", rt)
        analyst = f"{self.subnet}.{ANALYST_OCTET}"
        _ip("addr", "add", f"{analyst}/24", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")
        self.addresses["analyst"] = analyst
        links.append(("va", "", self._root_link))
        for (side, _, _), addr in zip(links, self.addresses.values(), strict=True):
            _ip("-n", rt, "link", "set", side, "up")
            self._sysctl(rt, {f"conf/{side}/proxy_arp": "1", f"conf/{side}/rp_filter": "0"})
            _ip("-n", rt, "route", "add", f"{addr}/32", "dev", side)
        self._impair(rt, links)

    def _impair(self, rt: str, links: Sequence[tuple[str, str, str]]) -> None:
        netem = ["qdisc", "add", "dev"]
        spec = ["root", "netem", "delay", f"{self.delay_ms:g}ms", "loss", f"{self.loss_pct:g}%"]
        _, first_ns, first_dev = links[0]
        probe = subprocess.run(
            ["ip", "netns", "exec", first_ns, "tc", *netem, first_dev, *spec],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if probe.returncode == 0:
            for _, ns, dev in links[1:]:
                pre = ["ip", "netns", "exec", ns] if ns else []
                subprocess.run([*pre, "tc", *netem, dev, *spec], check=True, timeout=30)
            self.impairment = "netem"
            return
        why = probe.stderr.strip() or f"tc exited {probe.returncode}"
        if not Path("/dev/net/tun").exists():
            raise NetnsUnavailable(
                f"cannot add latency and loss: tc netem failed ({why}) and /dev/net/tun is missing"
            )
        fwd = self.popen(
            ROUTER,
            [sys.executable, str(TUN_SCRIPT), _TUN_DEV, f"{self.delay_ms:g}", f"{self.loss_pct:g}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fwd.stdout is not None
        line = fwd.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the TUN impairment did not start: {line!r}")
        _ip("-n", rt, "link", "set", _TUN_DEV, "up")
        self._sysctl(rt, {f"conf/{_TUN_DEV}/rp_filter": "0"})
        _ip("-n", rt, "route", "add", "default", "dev", _TUN_DEV, "table", _TUN_TABLE)
        for side, _, _ in links:  # what comes in from a host goes through the TUN device once
            _ip("-n", rt, "rule", "add", "iif", side, "lookup", _TUN_TABLE, "pref", "100")
        self.impairment = f"tun (tc netem: {why})"

    # ------------------------------------------------------------------ use
    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``); stopped by close()."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            start_new_session=True,  # a Ctrl-C reaches only the test, whose close() stops it
            **kwargs,
        )
        self._procs.append(proc)
        return proc

    def link(self, host: str, state: str) -> None:
        """Set ``host``'s only link ``"down"`` (cut off from every other host) or ``"up"``."""
        _ip("-n", self.ns(host), "link", "set", "eth0", state)

    # ------------------------------------------------------------------ tear-down
    def close(self) -> None:
        """Stop every process started here, delete every namespace and link made; idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        if _ip("link", "show", self._root_link, check=False).returncode == 0:
            _ip("link", "del", self._root_link, check=False)
        atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """Namespaces or links of this run that still exist (empty after close())."""
        out = [n for n in _ip("netns", "list").stdout.split() if n.startswith(f"ts-{self.run_id}")]
        if _ip("link", "show", self._root_link, check=False).returncode == 0:
            out.append(self._root_link)
        return out
