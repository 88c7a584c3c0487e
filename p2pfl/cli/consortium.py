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
