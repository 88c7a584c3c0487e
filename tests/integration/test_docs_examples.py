"""The docs' runnable examples run as written, and their relative links lead somewhere.

A fenced ``bash`` block whose line right above is ``<!-- doc-test -->`` is runnable (the
convention is described in docs/contributing.md). Each page's runnable blocks run in
order, as ``bash -e -o pipefail``, in one fresh temporary folder per page that holds the
repository's ``topologies/`` and ``scripts/`` (what the commands read), with this
interpreter's ``bin`` (the project's ``.venv/bin``) first on ``PATH``; so everything a
command writes (``runs/``, ``bundles/``, plots) lands in the temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
MARKER = "<!-- doc-test -->"
# What the commands in the docs read, relative to the repository root.
INPUTS = ("topologies", "scripts")
BLOCK_TIMEOUT = 180.0  # seconds; the slowest block (three node processes) takes ~10 s on an idle machine

_RUNNABLE = re.compile(r"^" + re.escape(MARKER) + r"[ \t]*\n```bash[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def runnable_blocks(text: str) -> list[str]:
    """The bash blocks of a page marked as runnable, in page order."""
    return [match.group(1) for match in _RUNNABLE.finditer(text)]


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _bin_dir() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "p2pfl").exists() else REPO / ".venv" / "bin"


PAGES_WITH_EXAMPLES = [page for page in PAGES if runnable_blocks(page.read_text(encoding="utf-8"))]


def test_convention_finds_the_examples() -> None:
    # A typo in the marker or the fence would silently test nothing.
    assert (REPO / "README.md") in PAGES_WITH_EXAMPLES
    assert len(PAGES_WITH_EXAMPLES) >= 8
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        marked = len(re.findall(r"^" + re.escape(MARKER), text, re.M))
        assert marked == len(runnable_blocks(text)), f"{_page_id(page)}: a {MARKER} not right above a ```bash fence"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=_page_id)
def test_examples_run(page: Path, tmp_path: Path) -> None:
    for name in INPUTS:
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    env = {**os.environ, "PATH": f"{_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)  # a block that needs one says so
    for number, block in enumerate(runnable_blocks(page.read_text(encoding="utf-8")), 1):
        started = time.monotonic()
        # Its own process group: background jobs (`p2pfl node ... &`) end with the block.
        process = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            stdout, stderr = process.communicate()
            pytest.fail(f"{_page_id(page)} block {number} ran past {BLOCK_TIMEOUT:g} s:\n{block}\n"
                        f"--- stdout\n{stdout}\n--- stderr\n{stderr}")
        finally:
            _kill_group(process.pid)
        assert process.returncode == 0, (
            f"{_page_id(page)} block {number} exited {process.returncode} after "
            f"{time.monotonic() - started:.1f} s:\n{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_CODE.sub(lambda match: match.group(0)[1:-1], heading).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def relative_links(text: str) -> list[str]:
    """Link targets outside code that point into this repository (no scheme)."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return [target for target in _LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not broken, f"{_page_id(page)}: broken links:\n" + "\n".join(broken)


def test_anchor_rules() -> None:
    assert github_anchor("Live membership and progress over MQTT (optional)") == (
        "live-membership-and-progress-over-mqtt-optional"
    )
    assert github_anchor("Experiment keys (`p2pfl simulate`)") == "experiment-keys-p2pfl-simulate"
    assert github_anchor("node.toml") == "nodetoml"
    assert github_anchor("4. Operate the nodes") == "4-operate-the-nodes"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
