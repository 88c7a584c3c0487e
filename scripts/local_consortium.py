#!/usr/bin/env python3
"""Rehearse a consortium on this machine, then compare it with the simulator.

Every member runs as its own OS process (`p2pfl node`, CurveZMQ on, TCP on 127.0.0.1);
their metrics are merged into OUT/metrics.jsonl and OUT/summary.json (`p2pfl report OUT`
draws them). With --compare, the same settings also run in the simulator and the
per-member final accuracies are printed side by side.

    python scripts/local_consortium.py scripts/deploy/example-consortium.toml --out runs/rehearsal --compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p2pfl.consortium.description import load_description
from p2pfl.consortium.rehearsal import rehearse


def simulator_accuracies(description_path: Path) -> dict[str, float] | None:
    """Final accuracy per member from the simulator, for descriptions using the bundled learner."""
    from p2pfl.config import config_from_mapping
    from p2pfl.simulation.config import ExperimentConfig
    from p2pfl.simulation.simulator import run_simulation

    description = load_description(description_path)
    training = description.training
    if training.learner != "p2pfl.examples.bundled:build_learner":
        return None
    topology = description.topology_file() or description.topology
    settings = {k: v for k, v in training.learner_args.items() if k != "nodes"}
    config = config_from_mapping(ExperimentConfig, {
        **settings, "nodes": len(description.members), "topology": str(topology),
        "mixing": description.mixing, "rounds": training.rounds,
        "local_epochs": training.local_epochs, "local_steps": training.local_steps,
    })
    result = run_simulation(config)
    last = config.rounds - 1
    by_index = {row["node"]: row["test_accuracy"] for row in result.rows if row["round"] == last}
    names = description.names
    if set(by_index) == set(names):
        return by_index
    return {names[int(k)]: v for k, v in by_index.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("description", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--insecure", action="store_true", help="plain-text links")
    parser.add_argument("--compare", action="store_true", help="also run the simulator with the same settings")
    args = parser.parse_args()
    result = rehearse(args.description, args.out, timeout=args.timeout,
                      extra_args=("--insecure",) if args.insecure else ())
    summary = result.summary
    reference = simulator_accuracies(args.description) if args.compare else None
    print(f"{'member':<20} {'consortium':>10} {'simulator':>10}")
    for name, accuracy in summary["accuracy_by_member"].items():
        sim = f"{reference[name]:.4f}" if reference else "-"
        print(f"{name:<20} {accuracy:>10.4f} {sim:>10}")
    if reference:
        summary["simulator_accuracy_by_member"] = reference
        summary["max_gap_to_simulator"] = max(
            abs(summary["accuracy_by_member"][n] - reference[n]) for n in reference
        )
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"largest gap to the simulator: {summary['max_gap_to_simulator']:.4f}")
    print(f"wall {summary['wall_seconds']:.1f}s; exit codes {result.returncodes}")
    return 0 if all(code == 0 for code in result.returncodes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
