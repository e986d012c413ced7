#!/usr/bin/env python3
"""Splits the samples of `perf script -F comm,ip,sym` output of a `sealpost bench delivery` run
by part, for `scripts/bench delivery-parts`.

Each sample is put with the outermost frame (closest to the thread's root) that names a part:

- "sealpost": Sealpost's own crates (gateway, delivery, carriers, event store, blob store,
  domain, telemetry, the app's wiring);
- "simulator": the carrier simulator (`sealpost_carrier_sim`);
- "load generator, observer": `sealpost::harness` and `sealpost::bench`.

A sample without such a frame is connection I/O that its stack cannot assign to one part: the
NATS clients' connection tasks, hyper's server connections (the gateway's webhook endpoint and
the simulator's API), hyper's client connections (the RBM adapter and the simulator's webhook
sender), or Tokio's scheduler. Samples of the raw publish phase (before the pipeline starts) are
left out.

Usage: perf-parts.py BASE.txt THIS.txt  (prints a table of sample counts and their ratios)
"""

import re
import sys
from collections import Counter

PARTS = [
    ("simulator", re.compile(r"sealpost_carrier_sim")),
    ("load generator, observer", re.compile(r"sealpost::harness|sealpost::bench")),
    (
        "sealpost",
        re.compile(
            r"sealpost_gateway|sealpost_delivery|sealpost_carriers|sealpost_eventstore"
            r"|sealpost_blobstore|sealpost_domain|sealpost_telemetry|sealpost::app|sealpost::roles"
        ),
    ),
]
SHARED = [
    ("NATS connection I/O", re.compile(r"async_nats")),
    ("HTTP server connection I/O", re.compile(r"axum::serve|hyper::server|role::Server")),
    (
        "HTTP client connection I/O",
        re.compile(r"hyper_util::client|reqwest|hyper::client|role::Client"),
    ),
]
REST = "Tokio scheduler, other"
RAW_PHASE = re.compile(r"raw_publishes_phase|private_stream")
ROWS = [name for name, _ in PARTS] + [name for name, _ in SHARED] + [REST]


def classify(frames):
    for frame in reversed(frames):
        for name, rx in PARTS:
            if rx.search(frame):
                return name
    for name, rx in SHARED:
        if any(rx.search(f) for f in frames):
            return name
    return REST


def count(path):
    """Samples by part. A sample is a header line (the thread's name) and its frames, indented."""
    counts = Counter()
    frames = []

    def flush():
        if frames and not any(RAW_PHASE.search(f) for f in frames):
            counts[classify(frames)] += 1

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            if not line[0].isspace():
                flush()
                frames = []
            else:
                frames.append(line.strip())
    flush()
    return counts


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: perf-parts.py BASE.txt THIS.txt")
    base, this = count(sys.argv[1]), count(sys.argv[2])
    if not base or not this:
        sys.exit("no samples: is perf recording the sealpost process?")
    print(f"{'part':<30} {'base':>9} {'this':>9} {'base/this':>10}")
    rows = [(name, base[name], this[name]) for name in ROWS]
    rows.append(("the whole process", sum(base.values()), sum(this.values())))
    for name, b, t in rows:
        ratio = f"{b / t:.2f}" if t else "-"
        print(f"{name:<30} {b:>9} {t:>9} {ratio:>10}")


if __name__ == "__main__":
    main()
