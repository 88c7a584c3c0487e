"""Consortium tooling: from a description people write to one bundle per organisation.

* :func:`load_description` reads and validates the description TOML.
* :func:`init_consortium` writes ``OUT/<member>/`` bundles (node.toml, the public
  consortium.toml, the topology, the member's own key pair).
* :func:`check_bundles` lists what would stop the consortium from working.
* :func:`load_consortium` / :func:`allow_list_loader` read the public file at run time.
"""

from __future__ import annotations

from p2pfl.consortium.bundle import InitResult, init_consortium, node_document
from p2pfl.consortium.check import check_bundles
from p2pfl.consortium.description import (
    Description,
    MemberSpec,
    TrainingSettings,
    build_description_topology,
    load_description,
    parse_description,
)
from p2pfl.deploy.consortium_file import (
    Consortium,
    Member,
    allow_list_loader,
    load_consortium,
    load_consortium_topology,
    write_consortium,
)

__all__ = [
    "Consortium",
    "Description",
    "InitResult",
    "Member",
    "MemberSpec",
    "TrainingSettings",
    "allow_list_loader",
    "build_description_topology",
    "check_bundles",
    "init_consortium",
    "load_consortium",
    "load_consortium_topology",
    "load_description",
    "node_document",
    "parse_description",
    "write_consortium",
]
