"""Loading, reloading and unloading the repository's models while the server serves.

``--model-control none`` loads the start-up models once; ``poll`` looks at the repository every
``--repository-poll-seconds`` and reloads models whose files changed (once a change has held still
for one more look, so a half-copied file is never loaded), loads new ones and unloads removed
ones; ``explicit`` loads and unloads on RepositoryModelLoad / RepositoryModelUnload.

A (re)load loads the new versions beside the old ones and switches to them in one step; the old
versions finish the requests they already took, then close. A version whose files did not change
is kept, not reloaded. A model that fails to load is reported with its reason and never takes the
server or another model down; one that fails to reload keeps serving its old versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor
from pathlib import Path

from export.catalog import DEFAULT_MODEL, MODEL_NAMES
from export.manifest import MANIFEST_NAME
from serve.config import ServerConfig
from serve.errors import (
    ArtifactError,
    InvalidArgument,
    ModelNotFound,
    RepositoryError,
    TorchgrpcError,
    shortened,
)
from serve.loading import load_version
from serve.model_table import LOADING, READY, UNAVAILABLE, ModelStatus, ModelTable
from serve.models import ServedModel
from serve.repository import (
    FailedModel,
    ModelEntry,
    ModelVersion,
    RepositoryEntry,
    model_names,
    name_problem,
    repository_root,
    scan_model,
)

__all__ = ["ModelControl", "ReadinessHook"]

log = logging.getLogger(__name__)

# Told a model's name and whether it now serves, whenever that may have changed.
ReadinessHook = Callable[[str, bool], None]
_EXPORT_HINT = (
    "run `make export MODEL=efficientnet_lite0` (or `python -m export`) for the built-in model, "
    "or see docs/models.md to serve your own"
)
# What a model's files looked like when it was last (re)loaded: a change means a reload.
# Compared with ==, never hashed.
Stamp = object


class ModelControl:
    def __init__(
        self,
        config: ServerConfig,
        decode_pool: Executor,
        on_change: ReadinessHook | None = None,
    ) -> None:
        self._config = config
        self._repository = config.model_repository
        self._pool = decode_pool
        self.table = ModelTable("", on_change or _ignore, preferred_default=DEFAULT_MODEL)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Per model: the stamp of its entry, and of each loaded version (to keep unchanged ones).
        self._stamps: dict[str, Stamp] = {}
        self._version_stamps: dict[str, dict[int, Stamp]] = {}
        # Old versions finishing their requests, by the model they belong to.
        self._retiring: dict[asyncio.Task[None], str] = {}
        # Loads and unloads under way (tasks of their own: see _owned).
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return self._config.model_control

    async def start(self) -> None:
        """Loads the start-up models (``--models``, else every model) side by side. With
        ``--model-control none`` a server none of whose models loads would serve nothing, so
        that stops the start with the first model's reason."""
        try:
            names = await asyncio.to_thread(model_names, self._repository)
        except RepositoryError as error:
            raise RepositoryError(error.file, f"{error.reason}: {_EXPORT_HINT}") from None
        refused = {name: problem for name in names if (problem := name_problem(name))}
        for name, problem in refused.items():
            log.error("model folder %s is skipped: model name %s", shortened(name), problem)
        missing = [name for name in self._config.models if name not in names]
        if missing and self.mode == "none":
            # A name given on the command line that the repository doesn't hold is a typo.
            raise ModelNotFound(
                f"--models names {', '.join(map(shortened, missing))}, not in the repository "
                f"{self._repository} (models: {', '.join(names) or 'none'})"
            )
        wanted = list(self._config.models) or [n for n in names if n not in refused]
        if not wanted and self.mode == "none":
            raise RepositoryError(str(self._repository), f"has no model: {_EXPORT_HINT}")
        if self._config.models:
            self.table.default_model = self._config.models[0]
        results = await asyncio.gather(
            *(self.load(name) for name in wanted), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for name, failure in zip(wanted, results, strict=True):
            if not isinstance(failure, BaseException):
                continue
            if not isinstance(failure, Exception):
                raise failure
            if not isinstance(failure, ArtifactError):  # those were logged as they failed
                log.error("model %s: %s", shortened(name), failure)
        if self.mode == "none" and len(failures) == len(wanted):
            raise failures[0]
        if self._config.model_control == "poll":
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def load(self, name: str) -> None:
        """(Re)loads ``name`` from the repository; raises the reason it can't be served. The work
        runs as a task of its own: a caller that gives up (a client's deadline) leaves it to
        finish, so a model is never left half loaded."""
        problem = name_problem(name)
        if problem:
            raise InvalidArgument(f"model name {shortened(name)} {problem}")
        if not await asyncio.to_thread(self._in_repository, name):
            hint = f": run `make export MODEL={name}`" if name in MODEL_NAMES else ""
            raise ModelNotFound(f"model {name!r} is not in the repository {self._repository}{hint}")
        await self._owned(self._load_locked(name), f"load-{name}")

    async def unload(self, name: str) -> None:
        """Stops serving ``name``; returns once its versions have finished their requests. A model
        of the repository that is not loaded is left as it is; any other name is NOT_FOUND."""
        problem = name_problem(name)
        if problem:
            raise InvalidArgument(f"model name {shortened(name)} {problem}")
        if not self.table.knows(name) and not await asyncio.to_thread(self._in_repository, name):
            raise ModelNotFound(f"model {name!r} is not in the repository {self._repository}")
        await self._owned(self._unload_locked(name), f"unload-{name}")

    async def _load_locked(self, name: str) -> None:
        async with self._locks[name]:
            entry, stamp, versions = await asyncio.to_thread(self._look, name)
            await self._load(name, entry, stamp, versions)

    async def _unload_locked(self, name: str) -> None:
        async with self._locks[name]:
            # Known only once a load has begun: checked under the lock, so an unload that comes
            # while a first load runs waits for it, then unloads.
            if not self.table.knows(name):
                return
            old = self.table.remove(name, "unloaded")
            self._stamps.pop(name, None)
            self._version_stamps.pop(name, None)
        if old:
            log.info("unloading %s (%d version(s))", name, len(old))
        for model in old:
            self._retire(model)
        # Versions a reload retired earlier finish too before the unload answers.
        await asyncio.gather(
            *(task for task, owner in self._retiring.items() if owner == name),
            return_exceptions=True,
        )

    async def _owned(self, work: Coroutine[object, object, None], label: str) -> None:
        """Runs ``work`` as a task the control owns (close() waits for it), and waits for it
        without letting the caller's cancellation reach it."""
        task = asyncio.create_task(work, name=label)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def index(self, ready_only: bool = False) -> list[ModelStatus]:
        """Every model of the repository and every model served, with its state and reason."""
        try:
            names = await asyncio.to_thread(model_names, self._repository)
        except RepositoryError as error:
            log.warning("%s", error)
            names = []
        statuses = self.table.statuses()
        for name in names:
            problem = name_problem(name)
            if problem:
                # Quoted and escaped: the name on disk may not even be valid UTF-8.
                shown = shortened(name)
                statuses[shown] = [ModelStatus(shown, "", UNAVAILABLE, f"model name {problem}")]
            elif name not in statuses:
                statuses[name] = [ModelStatus(name, "", UNAVAILABLE, "not loaded")]
        lines = [status for name in sorted(statuses) for status in statuses[name]]
        return [s for s in lines if s.state == READY] if ready_only else lines

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for task in self._tasks:
            task.cancel()  # a load stops at its next step and closes what it loaded
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for model in self.table.served():
            await model.close()

    def _in_repository(self, name: str) -> bool:
        return os.path.lexists(repository_root(self._repository) / name)

    def _look(self, name: str) -> tuple[RepositoryEntry, Stamp, dict[int, Stamp]]:
        """The entry, and the stamps of it and its versions. Blocks: files are read."""
        entry = scan_model(self._repository, name)
        if isinstance(entry, FailedModel):
            return entry, ("failed", entry.reason), {}
        manifest = entry.folder / MANIFEST_NAME
        shared = (
            entry.settings,
            tuple(entry.labels.items()),
            entry.backends,
            _file_stamp(manifest) if os.path.lexists(manifest) else None,
        )
        versions: dict[int, Stamp] = {
            version.number: (
                shared,
                tuple(_file_stamp(path) for path in version.model_files.values()),
            )
            for version in entry.selected
        }
        return entry, (shared, tuple(sorted(versions.items()))), versions

    async def _load(
        self, name: str, entry: RepositoryEntry, stamp: Stamp, version_stamps: dict[int, Stamp]
    ) -> None:
        self._stamps[name] = stamp
        if isinstance(entry, FailedModel):
            self._failed(name, entry.reason)
            raise entry.error
        current = self.table.versions(name)
        if not current:
            self.table.set_state(name, LOADING)
        loaded_stamps = self._version_stamps.get(name, {})
        new: dict[int, ServedModel] = {}
        loaded: list[ServedModel] = []
        try:
            for version in entry.selected:
                unchanged = current.get(version.number)
                if (
                    unchanged is not None
                    and loaded_stamps.get(version.number) == version_stamps[version.number]
                ):
                    new[version.number] = unchanged
                    continue
                served = await asyncio.to_thread(
                    _load_version, entry, version, self._config, self._pool
                )
                served.batcher.start()
                loaded.append(served)
                new[version.number] = served
        except BaseException as error:  # cancelled (shutdown) included: nothing half loaded stays
            for model in loaded:
                await model.close()
            reason = _reason(error) if isinstance(error, Exception) else "loading was cancelled"
            self._failed(name, reason)
            if isinstance(error, TorchgrpcError) or not isinstance(error, Exception):
                raise
            raise RepositoryError(str(entry.folder), reason) from None
        old = self.table.install(name, new)
        self._version_stamps[name] = version_stamps
        if current:
            log.info(
                "%s now serves version(s) %s (was %s)",
                name, _numbers(new), _numbers(current),
            )  # fmt: skip
        for model in old:
            self._retire(model)

    def _failed(self, name: str, reason: str) -> None:
        serving = bool(self.table.versions(name))
        if serving:
            reason = f"reload failed, older versions serve on: {reason}"
        log.error("model %s: %s", name, reason)
        self.table.set_state(name, UNAVAILABLE, reason)

    def _retire(self, model: ServedModel) -> None:
        task = asyncio.create_task(model.retire(), name=f"retire-{model.name}-{model.version}")
        self._retiring[task] = model.name
        task.add_done_callback(self._retiring.pop)

    async def _poll(self) -> None:
        # A changed model whose new stamp must hold still for one more look before it reloads.
        pending: dict[str, Stamp] = {}
        while True:
            await asyncio.sleep(self._config.repository_poll_seconds)
            try:
                await self._poll_once(pending)
            except Exception:  # a look that fails is logged and retried at the next one
                log.exception("polling the model repository failed")

    async def _poll_once(self, pending: dict[str, Stamp]) -> None:
        try:
            names = await asyncio.to_thread(model_names, self._repository)
        except RepositoryError as error:
            log.warning("%s", error)
            return
        wanted = [n for n in (self._config.models or names) if n in names]
        for name in wanted:
            if name_problem(name):
                continue
            async with self._locks[name]:
                entry, stamp, versions = await asyncio.to_thread(self._look, name)
                if stamp == self._stamps.get(name):
                    pending.pop(name, None)
                    continue
                if pending.get(name) != stamp:
                    pending[name] = stamp
                    continue
                pending.pop(name)
                known = name in self._stamps
                log.info("%s %s: loading it", name, "changed on disk" if known else "appeared")
                # A failure is reported in the index and the log by _load.
                with contextlib.suppress(Exception):
                    await self._load(name, entry, stamp, versions)
        for name in [n for n in self._stamps if n not in wanted]:
            log.info("%s is gone from the repository: unloading it", name)
            await self.unload(name)
            self.table.forget(name)


def _load_version(
    entry: ModelEntry, version: ModelVersion, config: ServerConfig, pool: Executor
) -> ServedModel:
    """``load_version`` for a worker thread: a StopIteration (from a model's or a library's
    code) can't cross into an asyncio future, which would then never complete."""
    try:
        return load_version(entry, version, config, pool)
    except StopIteration:
        raise ArtifactError(f"{version.folder}: loading failed (StopIteration)") from None


def _file_stamp(path: Path) -> tuple[str, int, int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (str(path), -1, -1, -1)
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _reason(error: BaseException) -> str:
    if isinstance(error, TorchgrpcError):
        return str(error)
    first = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first}"


def _numbers(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in versions)


def _ignore(name: str, ready: bool) -> None:
    pass
