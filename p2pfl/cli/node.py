"""``p2pfl node --config node.toml``: run one organisation's node until training ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from p2pfl.settings import SETTINGS

log = logging.getLogger("p2pfl.node")


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "node",
        help="run this organisation's node (long-lived; resumes from its checkpoint)",
        description="Run one organisation's node. SIGINT/SIGTERM stop it cleanly (restart to "
        "resume from the last checkpoint); SIGHUP reloads the allow-list. Exits 7 when, resumed "
        "from its checkpoint, it finds no neighbour left to train with (they finished or are down).",
    )
    parser.add_argument("--config", required=True, help="the node's node.toml")
    parser.add_argument("--insecure", action="store_true", help=SETTINGS["insecure"].help)
    # each overrides the node.toml key of the same name
    parser.add_argument("--rounds", type=int, help=f"override rounds: {SETTINGS['rounds'].help}")
    parser.add_argument("--state-dir", help=f"override state_dir: {SETTINGS['state_dir'].help}")
    parser.add_argument("--start", help=f"override start: {SETTINGS['start'].help}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from p2pfl.deploy.config import load_node_config  # numpy: only for this command, not at CLI start

    overrides: dict[str, Any] = {}
    if args.insecure:
        overrides["insecure"] = True
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    if args.start is not None:
        overrides["start"] = args.start
    config, base = load_node_config(args.config, **overrides)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("p2pfl").setLevel(logging.INFO)  # a service should say what it does
    return asyncio.run(_main(config, base))


async def _main(config: Any, base: Any) -> int:
    from p2pfl.deploy.runner import run_org_node  # torch and zmq: only once node.toml is valid

    task = asyncio.create_task(run_org_node(config, base))
    loop = asyncio.get_running_loop()
    stopping = []

    def stop(signum: int) -> None:
        stopping.append(signum)
        log.info("received %s: stopping after cleanup", signal.Signals(signum).name)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        outcome = await task
    except asyncio.CancelledError:
        if not stopping:
            raise
        log.info("node %s stopped; start it again to resume from its last checkpoint", config.name)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    log.info("node %s done: final model at %s", config.name, outcome.final_model)
    return 0
