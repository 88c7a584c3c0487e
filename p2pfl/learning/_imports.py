"""Importing a user's ``module:function`` (a model builder, a metric) from the current folder."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def cwd_importable() -> Iterator[None]:
    """Put the current folder first on ``sys.path`` for the block, unless it is there.

    The ``p2pfl`` console script, unlike ``python -m``, does not, so a user's model
    package next to the experiment would not be found. Removed afterwards: imports made
    later must not pick up whatever the current folder holds.
    """
    cwd = os.getcwd()
    if "" in sys.path or cwd in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)
