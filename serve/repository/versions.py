"""A model's version policy (Triton's ``version_policy``): which versions on disk are served."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["VersionPolicy"]


@dataclass(frozen=True)
class VersionPolicy:
    """``latest`` (the ``num_versions`` highest), ``all``, or ``specific`` (``versions``).

    The default is Triton's: the latest one.
    """

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"latest: num_versions must be >= 1, not {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("specific: lists no versions")

    def select(self, available: Iterable[int]) -> tuple[int, ...]:
        """The versions served out of ``available``, newest first. ``specific`` versions that are
        not on disk are left out: ``missing`` names them."""
        newest_first = sorted(set(available), reverse=True)
        if self.kind == "latest":
            return tuple(newest_first[: self.num_versions])
        if self.kind == "all":
            return tuple(newest_first)
        return tuple(v for v in newest_first if v in self.versions)

    def missing(self, available: Iterable[int]) -> tuple[int, ...]:
        """The ``specific`` versions that are not among ``available`` (always empty otherwise)."""
        on_disk = set(available)
        return tuple(sorted(v for v in self.versions if v not in on_disk))
