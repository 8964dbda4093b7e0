"""The models being served, by name and version, and the state of each: what requests look up.

Only ``serve.model_control`` changes the table; a change replaces a model's versions in one step
on the event loop, so a request sees either the old versions or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from serve.errors import ModelNotFound, ServerUnavailable, shortened
from serve.models import ServedModel

__all__ = ["LOADING", "READY", "UNAVAILABLE", "UNLOADING", "ModelStatus", "ModelTable"]

# Triton's state names, as the repository index reports them.
READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class ModelStatus:
    """A model's line in the repository index (one per served version when READY)."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class _Slot:
    # Served versions, newest first: a request naming no version gets the first.
    versions: dict[int, ServedModel] = field(default_factory=dict)
    state: str = UNAVAILABLE
    reason: str = ""


class ModelTable:
    def __init__(
        self,
        default_model: str,
        on_change: Callable[[str, bool], None],
        preferred_default: str = "",
    ) -> None:
        """``default_model`` answers requests that name no model; "" lets the table pick:
        ``preferred_default`` when it serves, else the first model serving (a server may start
        with none and load them later). ``on_change(name, ready)`` is told whenever a model's
        readiness may have changed (per-model health)."""
        self._default_model = default_model
        self._preferred_default = preferred_default
        self._slots: dict[str, _Slot] = {}
        self._on_change = on_change

    @property
    def default_model(self) -> str:
        if self._default_model:
            return self._default_model
        ready = self.ready_names()
        if self._preferred_default in ready:
            return self._preferred_default
        return min(ready) if ready else ""

    @default_model.setter
    def default_model(self, name: str) -> None:
        self._default_model = name

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model called ``name`` (the default one for "") at ``version`` ("" = newest)."""
        name = name or self.default_model
        slot = self._slots.get(name)
        if slot is None or not slot.versions:
            if slot is not None and slot.state in (LOADING, UNLOADING):
                raise ServerUnavailable(f"model {shortened(name)} is {slot.state.lower()}")
            served = ", ".join(self.ready_names()) or "none"
            why = f" ({slot.reason})" if slot is not None and slot.reason else ""
            raise ModelNotFound(
                f"model {shortened(name)} is not served here{why} (served: {served})"
            )
        if not version:
            return next(iter(slot.versions.values()))
        number = _number(version)
        if number is None or number not in slot.versions:
            served = ", ".join(str(v) for v in slot.versions)
            raise ModelNotFound(
                f"model {shortened(name)} has no version {shortened(version)} (versions: {served})"
            )
        return slot.versions[number]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.model(name, version)
        except (ModelNotFound, ServerUnavailable):
            return False
        return True

    def knows(self, name: str) -> bool:
        """Whether ``name`` was ever loaded (or tried) and not forgotten since."""
        return name in self._slots

    def ready_names(self) -> list[str]:
        return [name for name, slot in self._slots.items() if slot.versions]

    def newest(self) -> list[ServedModel]:
        """Every served model's newest version."""
        slots = self._slots.values()
        return [next(iter(slot.versions.values())) for slot in slots if slot.versions]

    def served(self) -> list[ServedModel]:
        """Every served version of every model."""
        return [model for slot in self._slots.values() for model in slot.versions.values()]

    def versions(self, name: str) -> Mapping[int, ServedModel]:
        slot = self._slots.get(name)
        return dict(slot.versions) if slot is not None else {}

    def statuses(self) -> dict[str, list[ModelStatus]]:
        """Every model the table knows, with its state (per served version when READY)."""
        return {
            name: [ModelStatus(name, str(v), READY, slot.reason) for v in slot.versions]
            if slot.versions
            else [ModelStatus(name, "", slot.state, slot.reason)]
            for name, slot in self._slots.items()
        }

    def set_state(self, name: str, state: str, reason: str = "") -> None:
        """A model's state while it has no versions served (loading, failed, unloaded), or the
        reason beside a READY one (a reload that failed while the old versions serve on)."""
        slot = self._slots.setdefault(name, _Slot())
        slot.state, slot.reason = (READY if slot.versions else state), reason
        self._on_change(name, bool(slot.versions))

    def install(self, name: str, versions: Mapping[int, ServedModel]) -> list[ServedModel]:
        """Serves ``versions`` (number -> model) from now on; returns the models no longer served,
        for the caller to retire."""
        slot = self._slots.setdefault(name, _Slot())
        kept = {id(model) for model in versions.values()}
        old = [model for model in slot.versions.values() if id(model) not in kept]
        slot.versions = dict(sorted(versions.items(), reverse=True))
        slot.state, slot.reason = (READY if versions else UNAVAILABLE), ""
        self._on_change(name, bool(versions))
        return old

    def remove(self, name: str, reason: str) -> list[ServedModel]:
        """Stops serving ``name``; returns its models, for the caller to retire."""
        old = self.install(name, {})
        self.set_state(name, UNAVAILABLE, reason)
        return old

    def forget(self, name: str) -> None:
        """Drops a model no longer in the repository (after ``remove``)."""
        self._slots.pop(name, None)


def _number(version: str) -> int | None:
    """The version number ``version`` names, or None: versions are int64, at most 19 digits (and
    Python refuses to parse very long digit strings at all)."""
    if not (version.isascii() and version.isdigit()) or version[0] == "0" or len(version) > 19:
        return None
    return int(version)
