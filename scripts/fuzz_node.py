#!/usr/bin/env python3
"""Attack a live node with hostile messages while an honest neighbour keeps gossiping.

Node "0" of a 3-node ring runs its rounds (``Node.run``) on a tcp loopback port. Over
one raw pyzmq DEALER an attacker sends ``--messages`` hostile messages of every kind
(random frames, msgpack bombs, mutated headers and tensor tables, lying sizes, oversized
frames, wrong dtypes/shapes/names, NaN, wrong versions and kinds, spoofed and
non-neighbour senders, stale and far-future rounds, replays and duplicates, valid models
forged as neighbour "2", every other kind the wire knows: bye, sync, ...), spread over
the rounds. Over a second DEALER the honest neighbour "1" sends one valid model per
round, in the middle of the hostile traffic. Neighbour "2" is down; the attacker
impersonates it (plain links are unauthenticated).

    python scripts/fuzz_node.py                      # 100,000 hostile messages
    python scripts/fuzz_node.py --messages 2000 --json
    python scripts/fuzz_node.py --messages 20000 --compress int8   # a compressing node

Prints throughput, rejections by reason, the RSS peak over the baseline, the inbox's
largest size and whether the honest peer's model made every round; exits 1 if any of
the checks fails (see ``check``). ``tests/fuzz/test_live_node_fuzz.py`` runs the same
attack (smaller) under pytest. The attack itself lives in :mod:`p2pfl.testing.fuzzing`
and the hostile messages in :mod:`p2pfl.testing.hostile`; this is their command line.

Every hostile message is also decoded locally with the node's own schema and limits
first: the decoder is deterministic, so the node's count for each decoder reason must
equal the local prediction exactly, and a local non-WireError is a decoder bug whose
message the node must count as ``internal_error``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from p2pfl.testing.fuzzing import attack, check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compress", default="", help="the attacked node's codec (fp16, int8, topk:0.5, ...)")
    parser.add_argument("--rounds", type=int, default=None, help="node rounds (default: messages/1000, >= 4)")
    parser.add_argument("--rss-bound-mb", type=float, default=200.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before it counts as a hang")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    # the node logs the first rejections of each reason and then every 1000th: keep it quiet
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(attack(
        args.messages, seed=args.seed, rounds=args.rounds, timeout=args.timeout, compress=args.compress,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    ))
    failures = check(report, rss_bound_mb=args.rss_bound_mb)
    if args.json:
        print(json.dumps({**report.as_dict(), "failures": failures}, indent=2))
    else:
        print(f"hostile messages : {report.hostile_sent:,} (+{report.honest_sent} honest) "
              f"in {report.attack_seconds:.1f} s = {report.throughput:,.0f} msg/s")
        print(f"rounds           : {len(report.rounds_run)}/{report.rounds} run; honest model in every round: "
              f"{report.honest_flowed}")
        print(f"accepted         : {report.accepted:,} (hellos from neighbours, forged '2' models)")
        print("rejected         : " + ", ".join(f"{k}={v:,}" for k, v in report.rejected.most_common()))
        print(f"decoder crashes  : {report.crashes or 'none'}")
        print(f"memory           : RSS peak +{report.rss_peak_delta_mb:.1f} MB over "
              f"{report.rss_baseline_mb:.0f} MB; inbox max {report.inbox_max} (bound {report.inbox_bound})")
        print(f"still receiving  : {report.receiver_alive}")
        print("result           : " + ("OK" if not failures else "FAILED\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
