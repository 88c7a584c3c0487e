"""Odd values for hostile headers: edge-case pools and random msgpack-able junk."""

from __future__ import annotations

import math
import random
from typing import Any

#: Integers at the edges of msgpack's and the wire's ranges.
INTS = [0, 1, -1, 2, 255, 2**31, 2**32, 2**40 - 1, 2**40, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
#: Floats that are not numbers, or barely.
FLOATS = [0.0, -0.0, 1.0, 1.5, math.nan, math.inf, -math.inf, 1e308, 5e-324]
#: Strings a header might carry: names, kinds, dtypes, paths, non-ASCII.
STRS = ["", "model", "hello", "exec", "0", "1", "2", "7", "float32", "float128", "object",
        "<f4", "weight", "\x00", "x" * 300, "é", "\U0001f600", "../../etc/passwd"]


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value: scalars of every type, nested containers up to depth 3."""
    r = rng
    pick = r.randrange(12 if depth < 3 else 9)
    if pick == 0:
        return None
    if pick == 1:
        return r.random() < 0.5
    if pick == 2:
        return r.choice(INTS)
    if pick == 3:
        return r.choice(FLOATS)
    if pick == 4:
        return r.choice(STRS)
    if pick == 5:
        return r.randbytes(r.randrange(16))
    if pick == 6:
        return r.randint(-(2**63), 2**64 - 1)
    if pick == 7:
        return r.uniform(-1e9, 1e9)
    if pick == 8:
        return "".join(chr(r.randrange(1, 0xD7FF)) for _ in range(r.randrange(8)))
    if pick == 9:
        return [junk(r, depth + 1) for _ in range(r.randrange(5))]
    if pick == 10:
        return {r.choice(STRS): junk(r, depth + 1) for _ in range(r.randrange(4))}
    return [[junk(r, depth + 1)]]
