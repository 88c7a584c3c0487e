"""The `Topology` value: a graph plus the mixing matrix used to average over it."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from p2pfl.errors import TopologyError

__all__ = ["Topology"]


# eq=False: the dataclass-generated __eq__ would compare ndarrays with `==`, which
# raises on truth-testing; identity equality is the honest semantics here.
@dataclass(frozen=True, eq=False)
class Topology:
    """A communication graph and its mixing matrix.

    Attributes:
        graph: undirected graph whose nodes are the ints ``0..n-1`` in index order.
            Every node has a ``name`` attribute (str); nodes read from files may carry
            ``address`` and other attributes.
        mixing: ``(n, n)`` float64 matrix, symmetric and doubly stochastic, positive
            only on edges and the diagonal. Stored read-only.
        spec: the generator spec or file path the topology was built from.
        mixing_method: canonical name of the method that produced ``mixing``.
    """

    graph: nx.Graph
    mixing: np.ndarray
    spec: str
    mixing_method: str = "metropolis"
    _names: tuple[str, ...] = field(init=False, repr=False)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.graph.number_of_nodes()
        if list(self.graph.nodes) != list(range(n)):
            raise TopologyError(
                "topology graph nodes must be the ints 0..n-1 in order; "
                "build it with build_topology() or relabel it first"
            )
        names = [str(self.graph.nodes[i].get("name", i)) for i in range(n)]
        if len(set(names)) != n:
            dupes = sorted({x for x in names if names.count(x) > 1})
            raise TopologyError(f"node names must be unique, duplicated: {dupes}")
        mixing = np.array(self.mixing, dtype=np.float64, copy=True)
        if mixing.shape != (n, n):
            raise TopologyError(f"mixing matrix has shape {mixing.shape}, expected ({n}, {n}) for {n} nodes")
        # A shared, mutable matrix would let one caller silently corrupt every
        # node's averaging; freeze a private copy instead.
        mixing.setflags(write=False)
        object.__setattr__(self, "mixing", mixing)
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.graph.number_of_nodes()

    @property
    def names(self) -> list[str]:
        """Node names in index order."""
        return list(self._names)

    def neighbours(self, i: int) -> list[int]:
        """Return the sorted neighbour indices of node ``i``.

        Raises:
            TopologyError: if ``i`` is not a node index.
        """
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < self.n:
            raise TopologyError(f"node index {i!r} is out of range; valid indices are 0..{self.n - 1}")
        return sorted(self.graph.neighbors(int(i)))

    def index_of(self, name: str) -> int:
        """Return the index of the node called ``name``.

        Raises:
            TopologyError: if no node has that name.
        """
        try:
            return self._index[name]
        except KeyError:
            shown = ", ".join(self._names[:10])
            more = " ..." if self.n > 10 else ""
            raise TopologyError(f"unknown node name {name!r}; known names: {shown}{more}") from None
