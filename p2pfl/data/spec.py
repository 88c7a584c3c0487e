"""Parsing the file part of a dataset spec: ``csv:PATH[,label=COLUMN]`` and ``npz:PATH``.

Options follow the path after commas, as ``KEY=VALUE``. A path may itself hold
commas: only the trailing comma-separated pieces that look like ``KEY=VALUE``
(a name, then ``=``) are options, so ``csv:runs,2024/data.csv`` is a path with
no options. If the whole text after ``csv:`` names an existing file it is taken
as the path even when it ends in something like ``,x=1.csv``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from p2pfl.errors import DataError

# The options each file kind takes; npz names its arrays itself (x, y), so it needs none.
OPTIONS: dict[str, tuple[str, ...]] = {"csv": ("label",), "npz": ()}
_OPTION = re.compile(r"\s*([A-Za-z_][\w-]*)\s*=(.*)", re.DOTALL)


@dataclass(frozen=True)
class FileSpec:
    """A user file named in a dataset spec.

    Attributes:
        kind: ``"csv"`` or ``"npz"``.
        path: the path as written (not yet expanded or resolved).
        label: the CSV label column named with ``label=COLUMN``, if any.
    """

    kind: str
    path: str
    label: str | None = None

    def with_label(self, column: str) -> str:
        """The spec text that names ``column`` as the label, for messages."""
        return f"{self.kind}:{self.path},label={column}"


def parse_file_spec(kind: str, rest: str) -> FileSpec:
    """Split ``rest`` (the text after ``csv:`` / ``npz:``) into path and options.

    Args:
        kind: ``"csv"`` or ``"npz"``.
        rest: e.g. ``"data/wine.csv,label=class"``.

    Returns:
        The :class:`FileSpec`.

    Raises:
        DataError: for an unknown, repeated or empty option.
    """
    allowed = OPTIONS[kind]
    if Path(rest.strip()).expanduser().is_file():
        return FileSpec(kind, rest.strip())
    pieces = rest.split(",")
    options: dict[str, str] = {}
    while len(pieces) > 1:
        match = _OPTION.fullmatch(pieces[-1])
        if match is None:
            break
        pieces.pop()
        key, value = match.group(1).lower(), match.group(2).strip()
        if key not in allowed:
            raise DataError(_unknown_option(kind, key, rest))
        if key in options:
            raise DataError(f"dataset {kind}:{rest} gives {key}= more than once; give it once")
        if not value:
            raise DataError(f"dataset {kind}:{rest} has an empty {key}=; write {key}=COLUMN")
        options[key] = value
    return FileSpec(kind, ",".join(pieces).strip(), label=options.get("label"))


def _unknown_option(kind: str, key: str, rest: str) -> str:
    allowed = OPTIONS[kind]
    if not allowed:
        return (
            f"dataset {kind}:{rest} has option {key}=, but {kind} files take no options "
            "(an npz archive names its arrays x and y, or x_train, y_train, x_test and y_test; "
            f"and no file named {rest.strip()!r} exists)"
        )
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]}=? " if close else ""
    forms = ", ".join(f"{k}=..." for k in allowed)
    return (
        f"dataset {kind}:{rest} has unknown option {key}=; {hint}{kind} takes {forms} "
        f"(and no file named {rest.strip()!r} exists)"
    )
