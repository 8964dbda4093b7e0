"""Where a settings object's values come from, and which source wins.

Precedence, lowest first: the defaults, a TOML file (``--config FILE``, or
``TORCHGRPC_CONFIG=FILE``), the environment (``TORCHGRPC_<SETTING>``), the command-line flags.

Everything here is derived from the fields of a frozen dataclass made with ``setting()``
(``ServerConfig``): a new field is at once a flag, an environment variable and a TOML key, and its
text is read by the same parser whichever source gives it.

- TOML keys are the field names (``max_queue_size = 128``); values take TOML's types
  (``models = ["a", "b"]``) and a string is read as the flag's text (``models = "a,b"``). An
  unknown key is an error: a typo in a file must not silently leave a setting at its default.
- Environment variables are ``TORCHGRPC_`` and the field name in capitals
  (``TORCHGRPC_MODELS=a,b``). An unknown one is only a warning (see ``_unknown_variables``).
- An empty text unsets a setting that may be unset (``TORCHGRPC_TLS_CERT=``).
- Every source is read whole: a bad value stops start-up even where a later source overrides it,
  rather than wait, hidden, to bite when that override goes.

A bad value is a ``ConfigError`` of one line naming the setting and its source:
``max_queue_size = "abc" (from TORCHGRPC_MAX_QUEUE_SIZE): expected an integer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "CONFIG_FLAG",
    "CONFIG_VARIABLE",
    "DEFAULT",
    "ENV_PREFIX",
    "PRECEDENCE",
    "ConfigError",
    "Loaded",
    "Setting",
    "add_arguments",
    "effective_toml",
    "load",
    "setting",
    "settings_of",
    "toml_value",
]

ENV_PREFIX = "TORCHGRPC_"
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
CONFIG_FLAG = "--config"
# The source of a setting that no source gave.
DEFAULT = "default"
PRECEDENCE = (
    f"defaults < TOML file ({CONFIG_FLAG} FILE or {CONFIG_VARIABLE}=FILE) < environment "
    f"({ENV_PREFIX}<SETTING>) < command-line flags"
)
_CONFIG_DEST = "config_file"
# Settings whose text is comma-separated: TOML gives them as arrays of strings.
_LISTS = (tuple, list, frozenset, set)
_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
    **dict.fromkeys(_LISTS, "list of strings"),
}

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A setting's value is wrong, said in one line. ``settings`` names the settings involved
    (when the raiser knows them), so that the loader can add where each one's value came from."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


def setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any] | None = None,
    flags: tuple[str, ...] = (),
) -> Any:
    """A field of a settings class: its default and --help line, the parser of its text (the
    field's type when omitted) and its flags (``--field-name`` when omitted)."""
    return field(default=default, metadata={"help": help, "parse": parse, "flags": flags})


@dataclass(frozen=True)
class Setting:
    """One field as its sources see it: its names in each, its type and its parser."""

    name: str
    default: Any
    help: str
    flags: tuple[str, ...]
    # The field's type without ``None``: ``Path`` for ``Path | None``, ``tuple`` for
    # ``tuple[str, ...]``.
    kind: type[Any]
    optional: bool
    # None: the kind itself parses the text (``int("12")``).
    parser: Callable[[str], Any] | None

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.kind, self.kind.__name__)

    def from_text(self, text: str, source: str) -> Any:
        """The value of a flag's or a variable's text (or a TOML string)."""
        if self.optional and not text:
            return None
        try:
            return (self.parser or self.kind)(text)
        except ValueError as error:
            # A parser of our own writes its message for people; int()'s and float()'s don't.
            reason = str(error) if self.parser else f"expected {_a(self.type_name)}"
            raise self._bad(text, source, reason) from None

    def from_toml(self, value: object, source: str) -> Any:
        if isinstance(value, str):
            return self.from_text(value, source)
        if (
            self.kind in _LISTS
            and isinstance(value, list)
            and all(isinstance(item, str) for item in value)
        ):
            return self.from_text(",".join(value), source)
        # type(), not isinstance(): TOML's true is no integer, but its 1 is a fine number.
        if type(value) is self.kind or (self.kind is float and type(value) is int):
            return self.kind(value)
        raise self._bad(value, source, f"expected {_a(self.type_name)}")

    def _bad(self, value: object, source: str, reason: str) -> ConfigError:
        return ConfigError(
            f"{self.name} = {toml_value(value)} (from {source}): {reason}", self.name
        )


def settings_of(cls: type[DataclassInstance]) -> tuple[Setting, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_setting_of(f, hints[f.name]) for f in dataclasses.fields(cls))


def _setting_of(definition: dataclasses.Field[Any], hint: Any) -> Setting:
    members = typing.get_args(hint)
    optional = typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in members
    if optional:
        (hint,) = (member for member in members if member is not type(None))
    name = definition.name
    return Setting(
        name=name,
        default=definition.default,
        help=definition.metadata["help"],
        flags=definition.metadata["flags"] or ("--" + name.replace("_", "-"),),
        kind=typing.get_origin(hint) or hint,
        optional=optional,
        parser=definition.metadata["parse"],
    )


class _Given(NamedTuple):
    text: str
    flag: str


class _Flag(argparse.Action):
    """Keeps a flag's text as typed, and which of its flags was typed: the text is parsed as every
    source's is, and an error names the flag the user wrote."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | typing.Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, _Given(str(values), option_string or self.dest))


def add_arguments(parser: argparse.ArgumentParser, cls: type[DataclassInstance]) -> None:
    """One ``--option`` per field of ``cls``, documented from the field, and ``--config``."""
    for item in settings_of(cls):
        # A switch may be given alone (``--allow-python-factories``) or with a value.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if item.kind is bool else {}
        default = item.default
        shown = ",".join(sorted(default)) if isinstance(default, frozenset | tuple) else default
        parser.add_argument(
            *item.flags,
            dest=item.name,
            action=_Flag,
            default=argparse.SUPPRESS,
            help=f"{item.help} (default: {shown})",
            **switch,
        )
    parser.add_argument(
        CONFIG_FLAG,
        dest=_CONFIG_DEST,
        metavar="FILE",
        help=f"TOML file of settings (keys: the options' names with underscores), read before "
        f"the environment and the options, which win; or set {CONFIG_VARIABLE}",
    )


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """A settings object, with where each of its values came from."""

    config: T
    # Every setting's source: DEFAULT, the TOML file's path, a variable's name or a flag.
    sources: dict[str, str]
    # The TOML file read and what named it (CONFIG_FLAG or CONFIG_VARIABLE), or None.
    config_file: tuple[Path, str] | None
    warnings: tuple[str, ...]


# A setting's value and its source.
_Values = dict[str, tuple[Any, str]]


def load(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str]) -> Loaded[T]:
    """``cls`` from its sources; ``args`` come from a parser given ``add_arguments``.

    Raises ``ConfigError``, whose one line names the setting at fault and its source.
    """
    settings = settings_of(cls)
    config_file = _config_file(args, environ)
    values: _Values = {}
    if config_file is not None:
        values |= _from_file(settings, config_file[0])
    values |= _from_environment(settings, environ)
    values |= _from_flags(settings, args)
    try:
        config = cls(**{name: value for name, (value, _) in values.items()})
    except ValueError as error:
        raise ConfigError(f"{error} ({_sources_of(error, values)})") from None
    return Loaded(
        config=config,
        sources={s.name: values[s.name][1] if s.name in values else DEFAULT for s in settings},
        config_file=config_file,
        warnings=_unknown_variables(settings, environ),
    )


def _config_file(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path, str] | None:
    flag = getattr(args, _CONFIG_DEST, None)
    if flag:
        return Path(flag), CONFIG_FLAG
    variable = environ.get(CONFIG_VARIABLE)
    return (Path(variable), CONFIG_VARIABLE) if variable else None


def _from_file(settings: tuple[Setting, ...], path: Path) -> _Values:
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    by_name = {s.name: s for s in settings}
    values: _Values = {}
    for key, value in table.items():
        if key not in by_name:
            raise ConfigError(f"unknown setting {key} in {path}{_did_you_mean(key, by_name)}")
        values[key] = (by_name[key].from_toml(value, str(path)), str(path))
    return values


def _from_environment(settings: tuple[Setting, ...], environ: Mapping[str, str]) -> _Values:
    return {
        s.name: (s.from_text(environ[s.variable], s.variable), s.variable)
        for s in settings
        if s.variable in environ
    }


def _from_flags(settings: tuple[Setting, ...], args: argparse.Namespace) -> _Values:
    values: _Values = {}
    for s in settings:
        given = getattr(args, s.name, None)
        if isinstance(given, _Given):
            values[s.name] = (s.from_text(given.text, given.flag), given.flag)
    return values


def _unknown_variables(
    settings: tuple[Setting, ...], environ: Mapping[str, str]
) -> tuple[str, ...]:
    """Warnings, not errors: other programs share the prefix (our test harness passes
    TORCHGRPC_SERVER_PYTHON through the server's environment), and a variable of a newer
    release left set while rolling back must not stop the server. A typo still shows in the log."""
    known = {s.variable for s in settings} | {CONFIG_VARIABLE}
    return tuple(
        f"unknown environment variable {name} ignored{_did_you_mean(name, known, ENV_PREFIX)}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known
    )


def _did_you_mean(word: str, known: Iterable[str], prefix: str = "") -> str:
    """The known word closest to ``word``, compared without the ``prefix`` they all share (which
    would make any two look alike)."""
    close = difflib.get_close_matches(
        word.removeprefix(prefix), [name.removeprefix(prefix) for name in known], n=1
    )
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _sources_of(error: ValueError, values: _Values) -> str:
    """Where the settings a validation error names came from; when it names none, every source
    that gave one."""
    named = error.settings if isinstance(error, ConfigError) else ()
    if named:
        return ", ".join(
            f"{name} from {values[name][1]}" if name in values else f"{name}: {DEFAULT}"
            for name in named
        )
    used = dict.fromkeys(source for _, source in values.values())
    return "sources: " + (", ".join(used) or "defaults only")


def effective_toml(loaded: Loaded[Any]) -> str:
    """The settings in force as a TOML file, each line saying where its value came from."""
    lines = [f"# The effective settings. Precedence: {PRECEDENCE}."]
    if loaded.config_file is not None:
        path, named_by = loaded.config_file
        lines.append(f"# Config file: {path} (from {named_by}).")
    for item in settings_of(type(loaded.config)):
        value = getattr(loaded.config, item.name)
        source = loaded.sources[item.name]
        where = DEFAULT if source == DEFAULT else f"from {source}"
        text = f"# {item.name} is unset" if value is None else f"{item.name} = {toml_value(value)}"
        lines.append(f"{text}  # {where}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """``value`` as TOML writes it (sets sorted); anything else (a path) as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, frozenset | set):
        return toml_value(sorted(value))
    # TOML's basic strings take JSON's escapes.
    return json.dumps(str(value), ensure_ascii=False)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun
