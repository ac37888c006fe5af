"""Memory per connection of the permessage-deflate state, by settings.

Each WebSocket with context takeover keeps one compressor (server->client,
our window_bits/mem_level) and one decompressor (client->server, the window
the client uses; we ask for the same window_bits when the client allows).
This creates N such pairs, pushes one chat-sized message through each (zlib
allocates lazily) and reports the RSS growth per pair.

    .venv/bin/python bench/deflate_memory.py [--pairs 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zlib


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(pairs: int, window_bits: int, mem_level: int, client_window_bits: int) -> float:
    payload = json.dumps({"type": "message", "body": "Where is my order 12345? " * 12}).encode()
    keep = []
    before = rss_kib()
    for _ in range(pairs):
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits, mem_level)
        data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        d = zlib.decompressobj(-client_window_bits)
        d.decompress(data)
        keep.append((c, d))
    after = rss_kib()
    del keep
    return (after - before) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        pairs, wb, ml, cwb = (int(x) for x in args.one.split(","))
        print(measure(pairs, wb, ml, cwb))
        return
    print(f"command: .venv/bin/python bench/deflate_memory.py --pairs {args.pairs}")
    print(f"{'server window/memLevel':>24} {'client window':>14} {'KiB per connection':>20}")
    for wb, ml, cwb in [(15, 8, 15), (15, 8, 11), (12, 5, 12), (11, 4, 15), (11, 4, 11), (11, 3, 11), (11, 2, 11),
                        (10, 3, 10), (9, 2, 9)]:
        # A fresh process per setting: freed memory from one would be reused by the next.
        out = subprocess.run(
            [sys.executable, __file__, "--one", f"{args.pairs},{wb},{ml},{cwb}"],
            check=True, capture_output=True, text=True,
        ).stdout
        print(f"{f'{wb}/{ml}':>24} {cwb:>14} {float(out):>20.1f}")
    # Compression ratio of a 1.2 KB chat message at the default settings.
    msg = json.dumps({
        "type": "message", "conversation": "c01a21cb32fbc15e91050f212d130", "msg_id": "m01a21cb3300000000000000000",
        "seq": 42, "client_msg_id": "k-42", "sender": {"id": "agent-7", "role": "agent"}, "kind": "text",
        "body": ("Thanks for waiting. Your order #12345 shipped yesterday with the tracking number "
                 "1Z999AA10123456784; delivery is expected within two business days. ") * 6,
        "ts": 1795777834.123,
    }).encode()
    for wb, ml in [(15, 8), (11, 4), (11, 3)]:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wb, ml)
        out = c.compress(msg) + c.flush(zlib.Z_SYNC_FLUSH)
        print(f"{len(msg)} B JSON message -> {len(out) - 4} B deflated payload at {wb}/{ml} (+2..14 B frame header)")


if __name__ == "__main__":
    main()
