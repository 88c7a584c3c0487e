"""Comparing models: closed-form references against what the nodes ended with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def assert_same_weights(
    left: Sequence[Mapping[str, np.ndarray]], right: Sequence[Mapping[str, np.ndarray]], *, atol: float
) -> None:
    """Assert two lists of models (name -> array) agree tensor by tensor within ``atol``.

    Raises:
        AssertionError: the lists differ in length, a model's tensor names differ, or a
            tensor differs by more than ``atol`` (the message names the tensor).
    """
    if len(left) != len(right):
        raise AssertionError(f"{len(left)} models != {len(right)} models")
    for a, b in zip(left, right, strict=True):
        if a.keys() != b.keys():
            raise AssertionError(f"tensor names differ: {sorted(a)} != {sorted(b)}")
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)
