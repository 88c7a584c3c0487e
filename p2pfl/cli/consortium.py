"""``p2pfl consortium``: write every member's bundle from a description, and check them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError


def register(commands: Any) -> None:
    parser = commands.add_parser("consortium", help="create and check the bundles of a consortium")
    sub = parser.add_subparsers(dest="consortium_command", required=True, metavar="ACTION")

    init = sub.add_parser(
        "init", help="write one bundle per member (node.toml, consortium.toml, topology, key pair)"
    )
    init.add_argument("description", help="the consortium description (TOML)")
    init.add_argument("--out", required=True, metavar="DIR", help="where the bundles go (OUT/<member>/)")
    init.add_argument("--force", action="store_true", help="rewrite the bundles in an existing DIR")
    init.add_argument(
        "--keep-keys",
        action="store_true",
        help="reuse the key pairs already in DIR (new members get new ones); use with --force",
    )
    init.set_defaults(handler=run_init)

    check = sub.add_parser("check", help="check a bundles directory, or validate a description file")
    check.add_argument("path", help="bundles directory written by init, or a description .toml")
    check.set_defaults(handler=run_check)

    broker = sub.add_parser(
        "broker-config", help="a locked-down mosquitto for discovery: TLS, a password per member, per-member ACLs",
        description="Write mosquitto.conf, an ACL (member X publishes only under p2pfl/<consortium>/nodes/X/), "
        "a password file and a read-only watcher login into DIR; each member's password goes to "
        "BUNDLES/<member>/keys/mqtt.password (kept when it exists).",
    )
    broker.add_argument("bundles", help="bundles directory written by init")
    broker.add_argument("--out", required=True, metavar="DIR", help="where the broker's files go")
    broker.add_argument("--port", type=int, default=8883, help="the TLS listener's port (default 8883)")
    broker.add_argument(
        "--tls-host", action="append", default=[], metavar="HOST",
        help="a name or IP the broker is reached at (repeatable): makes a CA and the broker's certificate "
        "in DIR/certs and copies the CA to BUNDLES/<member>/keys/mqtt-ca.crt; without it, bring your own",
    )
    broker.add_argument("--watcher", default="watch", help="read-only user for p2pfl watch (default watch)")
    broker.set_defaults(handler=run_broker_config)

    rehearse = sub.add_parser(
        "rehearse", help="run every member as a local process (127.0.0.1, Curve on) and merge the results"
    )
    rehearse.add_argument("description", help="the consortium description (TOML)")
    rehearse.add_argument("--out", required=True, metavar="DIR", help="bundles, logs, metrics.jsonl, summary.json")
    rehearse.add_argument("--timeout", type=float, default=1800, help="kill members still running after this")
    rehearse.add_argument("--insecure", action="store_true", help="plain-text links (to measure Curve's cost)")
    rehearse.set_defaults(handler=run_rehearse)


def run_init(args: argparse.Namespace) -> int:
    # The consortium tools load zmq and networkx: only for this command, not at every CLI start.
    from p2pfl.consortium import init_consortium, load_consortium
    from p2pfl.consortium.bundle import CONSORTIUM_FILE

    out = Path(args.out)
    bundles = init_consortium(args.description, out, force=args.force, keep_keys=args.keep_keys)
    consortium = load_consortium(out / CONSORTIUM_FILE)
    print(f"consortium {consortium.name}: {len(bundles)} bundles in {out}")
    _print_members(consortium, out)
    if bundles.replaced:
        print(f"replaced {len(bundles.replaced)} files init writes; everything else in the bundles is untouched")
    for path in bundles.removed:
        print(f"removed {path} (no longer a member)")
    for path, keys in bundles.changed_settings.items():
        print(f"warning: {path}: {', '.join(keys)} changed or dropped; put lasting settings in the description")
    print("send each organisation only its own bundle directory (it holds its secret key)")
    return 0


def run_broker_config(args: argparse.Namespace) -> int:
    from p2pfl.consortium.broker_config import write_broker_config

    written = write_broker_config(
        args.bundles, args.out, port=args.port, watcher=args.watcher, tls_hosts=tuple(args.tls_host)
    )
    out = Path(args.out)
    print(f"wrote {written.config}, {out / 'acl'} and {out / 'passwords'} for users {', '.join(written.users)}")
    for user, path in written.passwords.items():
        print(f"  {user:<20} password in {path}")
    if written.ca is not None:
        print(f"CA {written.ca} (its key {written.ca.with_suffix('.key')} signs nothing else: keep it offline); "
              f"the broker's certificate is for {', '.join(args.tls_host)}")
    else:
        print(f"put the broker's certificate, key and CA in {out / 'certs'} (server.crt, server.key, ca.crt)")
    print(f"start it: mosquitto -c {written.config}")
    return 0


def run_rehearse(args: argparse.Namespace) -> int:
    from p2pfl.consortium.rehearsal import rehearse

    result = rehearse(
        args.description, args.out, timeout=args.timeout,
        extra_args=("--insecure",) if args.insecure else (),
    )
    summary = result.summary
    accuracy_of = summary["accuracy_by_member"]
    for name in sorted({*accuracy_of, *result.returncodes}):
        code = result.returncodes.get(name)
        accuracy = accuracy_of.get(name)
        shown = f"{accuracy:.4f}" if accuracy is not None else "none  "  # failed before a round
        print(f"{name:<20} accuracy {shown}  exit {code if code is not None else 'killed'}")
    mean = summary["mean_accuracy"]
    print(f"{summary['nodes']} members, {summary['rounds_completed']} rounds in {summary['wall_seconds']:.1f}s: "
          f"mean accuracy {'none' if mean is None else f'{mean:.4f}'}; logs in {args.out}/logs, "
          f"report with: p2pfl report {args.out}")
    failed = [name for name, code in result.returncodes.items() if code != 0]
    if failed:
        print(f"failed: {', '.join(sorted(failed))} (see their logs in {args.out}/logs)")
    return 1 if failed else 0


def run_check(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        return _check_directory(path)
    if path.is_file():
        return _check_description(path)
    raise ConfigError("path", f"{path} does not exist; give a bundles directory or a description file")


def _check_directory(path: Path) -> int:
    # lazy, as in run_init: zmq and networkx only when a consortium command runs
    from p2pfl.consortium import check_bundles, load_consortium
    from p2pfl.consortium.bundle import CONSORTIUM_FILE

    problems = check_bundles(path)
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        print(f"{len(problems)} problem(s) in {path}")
        return 1
    consortium = load_consortium(path / CONSORTIUM_FILE)
    print(f"ok: {len(consortium.members)} bundles of {consortium.name} in {path} are consistent")
    _print_members(consortium, path)
    return 0


def _check_description(path: Path) -> int:
    # lazy, as in run_init: zmq and networkx only when a consortium command runs
    from p2pfl.consortium import build_description_topology, load_description

    description = load_description(path)
    topology = build_description_topology(description)
    print(
        f"ok: description of {description.name}: {len(description.members)} members, "
        f"topology {description.topology} ({topology.graph.number_of_edges()} links), mixing {description.mixing}"
    )
    width = max(len(m.name) for m in description.members)
    for member in description.members:
        print(f"  {member.name:<{width}}  {member.endpoint}")
    return 0


def _print_members(consortium: Any, out: Path) -> None:
    # Fingerprints, never keys: they are what members compare over the phone.
    width = max(len(m.name) for m in consortium.members)
    for member in consortium.members:
        print(f"  {member.name:<{width}}  {member.endpoint:<28}  {member.fingerprint}  {out / member.name}")
