"""``p2pfl topology``: inspect, draw and save topologies."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError


def register(commands: Any) -> None:
    parser = commands.add_parser("topology", help="inspect, draw or save a topology")
    sub = parser.add_subparsers(dest="topology_command", required=True, metavar="ACTION")

    show = sub.add_parser("show", help="nodes, edges, degrees, diameter, spectral gap")
    _spec_arguments(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--png", metavar="FILE", help="also draw the graph to FILE (.png, .svg, .pdf ...: the suffix picks the format)"
    )
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
    from p2pfl.topology import build_topology  # networkx and numpy: only for this command

    return build_topology(args.spec, args.nodes, seed=args.seed, mixing=args.mixing)


def run_show(args: argparse.Namespace) -> int:
    from p2pfl.topology import describe, draw_topology, format_description  # as in _build

    if args.png:
        _check_image_suffix(args.png)  # before any output
    topology = _build(args)
    description = describe(topology)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    if args.png:
        with _writing("png", args.png):
            draw_topology(topology, args.png)
        if not args.json:
            print(f"drawn to {args.png}")
    return 0


@contextlib.contextmanager
def _writing(field: str, path: str) -> Iterator[None]:
    """Turn a failure to write ``path`` into a ConfigError naming the argument."""
    try:
        yield
    except FileExistsError as exc:  # mkdir on a parent that is a file
        raise ConfigError(field, f"cannot write {path}: {exc.filename} is a file, not a folder") from None
    except OSError as exc:  # no permission, a read-only disk ...
        raise ConfigError(field, f"cannot write {path} ({exc.strerror or exc})") from None


def _check_image_suffix(path: str) -> None:
    """Refuse a suffix matplotlib cannot write, rather than fail after the output."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix[1:] not in formats:
        raise ConfigError(
            "png", f"cannot draw to {path}: unknown image format {suffix!r}; use .png, .svg or .pdf "
            f"(or any of {', '.join('.' + name for name in sorted(formats))})"
        )


def run_save(args: argparse.Namespace) -> int:
    from p2pfl.topology import write_topology_file  # as in _build

    topology = _build(args)
    with _writing("file", args.file):
        write_topology_file(topology.graph, args.file)
    print(f"wrote {topology.n} nodes, {topology.graph.number_of_edges()} edges to {args.file}")
    return 0
