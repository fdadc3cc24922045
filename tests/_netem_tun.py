"""A userspace stand-in for ``tc qdisc ... netem delay D loss L`` on kernels without sch_netem.

Runs inside the router namespace of ``tests/_netns.py`` (``ip netns exec NS python THIS TUN
DELAY_MS LOSS_PCT``): every packet the router forwards is routed into the TUN device
``TUN``, read here, dropped with probability ``LOSS_PCT`` %, otherwise held ``DELAY_MS`` and
written back, where the kernel routes it on to its destination. Packets keep their order (one
fixed delay, like netem without jitter). Prints ``ready`` once the device exists; exits when its
stdin closes (the test process died) or on SIGTERM, and then prints how many packets it
forwarded and dropped.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main(argv: list[str]) -> int:
    name, delay_ms, loss_pct = argv[0], float(argv[1]), float(argv[2])
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(os.urandom(16))  # packet loss only; nothing secret depends on it
    delay, loss = delay_ms / 1000.0, loss_pct / 100.0
    held: collections.deque[tuple[float, bytes]] = collections.deque()
    forwarded = dropped = 0
    stdin = sys.stdin.fileno()
    print("ready", flush=True)
    while not stop:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        try:
            ready, _, _ = select.select([fd, stdin], [], [], timeout)
        except InterruptedError:
            continue
        if stdin in ready and not os.read(stdin, 4096):
            break  # the test process is gone
        if fd in ready:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if rng.random() < loss:
                    dropped += 1
                else:
                    held.append((time.monotonic() + delay, pkt))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, pkt = held.popleft()
            try:
                os.write(fd, pkt)
                forwarded += 1
            except OSError:
                dropped += 1  # the kernel refused it (a full queue): lost, like on a wire
    print(f"forwarded {forwarded} dropped {dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
