"""Parsing of generator specs such as ``torus:4x4`` or ``small-world:k=6,p=0.2``."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pfl.errors import TopologyError

__all__ = ["GeneratorSpec", "normalise_name", "parse_spec"]


def normalise_name(name: str) -> str:
    """Canonicalise a generator or method name: case-insensitive, ``_`` equals ``-``."""
    return name.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class GeneratorSpec:
    """A parsed ``name[:params]`` spec.

    Attributes:
        name: normalised generator name (aliases not yet resolved).
        positional: positional parameter strings, in order.
        keyword: ``key=value`` parameters (keys normalised like names).
    """

    name: str
    positional: tuple[str, ...] = ()
    keyword: dict[str, str] = field(default_factory=dict)


def parse_spec(spec: str) -> GeneratorSpec:
    """Split ``name[:p1,p2,key=value]`` into its parts.

    Args:
        spec: the generator spec.

    Returns:
        The parsed spec. Values stay strings; each generator converts its own.

    Raises:
        TopologyError: on an empty name, an empty parameter, a positional parameter
            after a keyword one, or a repeated keyword.
    """
    name, _, params = spec.partition(":")
    name = normalise_name(name)
    if not name:
        raise TopologyError(
            f"topology spec {spec!r} has no generator name; expected e.g. 'ring' or 'torus:4x4'"
        )
    positional: list[str] = []
    keyword: dict[str, str] = {}
    if params.strip():
        for raw in params.split(","):
            part = raw.strip()
            if not part:
                raise TopologyError(
                    f"topology spec {spec!r} has an empty parameter; separate parameters with single commas"
                )
            key, eq, value = part.partition("=")
            if eq:
                key = normalise_name(key)
                if not key or not value.strip():
                    raise TopologyError(
                        f"topology spec {spec!r}: parameter {part!r} must look like key=value"
                    )
                if key in keyword:
                    raise TopologyError(f"topology spec {spec!r} gives parameter {key!r} twice")
                keyword[key] = value.strip()
            else:
                if keyword:
                    raise TopologyError(
                        f"topology spec {spec!r}: positional parameter {part!r} follows a key=value one; "
                        "put positional parameters first"
                    )
                positional.append(part)
    return GeneratorSpec(name=name, positional=tuple(positional), keyword=keyword)
