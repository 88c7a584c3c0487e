"""``p2pfl topology``: inspect, draw and save topologies."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("topology", help="inspect, draw or save a topology")
    sub = parser.add_subparsers(dest="topology_command", required=True, metavar="ACTION")

    show = sub.add_parser("show", help="nodes, edges, degrees, diameter, spectral gap")
    _spec_arguments(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--png", metavar="FILE", help="also draw the graph to FILE")
    show.set_defaults(handler=run_show)

    save = sub.add_parser("save", help="write a generated topology to a file (.graphml/.json/.txt)")
    _spec_arguments(save)
    save.add_argument("file", help="output path; the format follows the extension")
    save.set_defaults(handler=run_save)


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="generator spec (ring, torus:4x4, random-regular:4, ...) or a file")
    parser.add_argument("--nodes", type=int, help="node count for generators")
    parser.add_argument("--seed", type=int, default=0, help="seed for random generators")
    parser.add_argument("--mixing", default="metropolis", help="metropolis, max-degree or file")


def _build(args: argparse.Namespace) -> Any:
    from p2pfl.topology import build_topology

    return build_topology(args.spec, args.nodes, seed=args.seed, mixing=args.mixing)


def run_show(args: argparse.Namespace) -> int:
    from p2pfl.topology import describe, draw_topology, format_description

    topology = _build(args)
    description = describe(topology)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    if args.png:
        draw_topology(topology, args.png)
        if not args.json:
            print(f"drawn to {args.png}")
    return 0


def run_save(args: argparse.Namespace) -> int:
    from p2pfl.topology import write_topology_file

    topology = _build(args)
    write_topology_file(topology.graph, args.file)
    print(f"wrote {topology.n} nodes, {topology.graph.number_of_edges()} edges to {args.file}")
    return 0
