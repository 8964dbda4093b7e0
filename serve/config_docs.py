"""Writes docs/configuration.md from ``ServerConfig``'s fields: ``make docs``.

The page is generated, never edited by hand; tests/test_configuration.py fails when it is stale.
Run ``python -m serve.config_docs [--output PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serve.config import ServerConfig, load_config
from serve.config_sources import (
    CONFIG_FLAG,
    CONFIG_VARIABLE,
    ENV_PREFIX,
    ConfigError,
    Setting,
    settings_of,
    toml_value,
)

__all__ = ["COMMAND", "DOCS", "EXAMPLE", "render"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.md"
COMMAND = "make docs"
# A TOML file, shown on the page (tests/test_configuration.py loads it, so it stays valid).
EXAMPLE = """\
models = ["efficientnet_lite0", "resnet34"]  # or "efficientnet_lite0,resnet34"
port = 50052
max_queue_delay_ms = 2.5
exif_transpose = false
tls_cert = "/etc/torchgrpc/cert.pem"
tls_key = "/etc/torchgrpc/key.pem"
"""


_HEADER = """\
# Configuration

<!-- Generated from serve/config.py by `{command}` (python -m serve.config_docs): do not edit. -->

Every setting of `python -m serve` can be given in four places; a later one wins:

1. its default;
2. a TOML file: `{flag} FILE`, or `{variable}=FILE`;
3. an environment variable: `{prefix}` and the setting's name in capitals;
4. a command-line flag.

`python -m serve --print-config` (with any other flags) prints the settings in force as a TOML
file, each line saying where its value came from, and exits without loading a model.

## The TOML file

Its keys are the settings' names, at the top level; its values take TOML's types, and a string is
read as a flag's text would be. An unknown key is an error.

```toml
{example}```

## The environment

`{prefix}MAX_QUEUE_SIZE=128`, `{prefix}MODELS=a,b`: each variable's text is read as a flag's would
be. An unknown `{prefix}` variable is logged as a warning and ignored.

## Values

- A boolean is `true` or `false` (or yes/no, on/off, 1/0); a boolean flag given alone means true.
- A list is comma-separated in a flag or a variable (`--models a,b`), an array or a
  comma-separated string in the TOML file.
- A path that is relative is relative to the server's working directory, whichever its source.
- An empty text unsets a setting that may be unset: `{prefix}TLS_CERT=`.
- Every source is checked whole: a bad value stops start-up even where a later source overrides
  it.

A bad value stops start-up (exit status 2) with one line naming the setting and where its value
came from:

```
python -m serve: error: {error}
```

## Settings
"""


def render() -> str:
    return "\n".join([_HEADER.format(**_facts()), *map(_section, settings_of(ServerConfig))])


def _facts() -> dict[str, str]:
    return {
        "command": COMMAND,
        "flag": CONFIG_FLAG,
        "variable": CONFIG_VARIABLE,
        "prefix": ENV_PREFIX,
        "example": EXAMPLE,
        "error": _sample_error(),
    }


def _sample_error() -> str:
    """The loader's own message for a bad integer from the environment."""
    item = next(s for s in settings_of(ServerConfig) if s.kind is int)
    try:
        load_config(argparse.Namespace(), {item.variable: "abc"})
    except ConfigError as error:
        return str(error)
    raise AssertionError(f"{item.variable}=abc was accepted")


def _section(item: Setting) -> str:
    kind = f"{item.type_name}, or unset" if item.optional else item.type_name
    default = "unset" if item.default is None else f"`{_portable(toml_value(item.default))}`"
    flags = ", ".join(f"`{flag}`" for flag in item.flags)
    return (
        f"### `{item.name}`\n\n{_escaped(item.help)}\n\n"
        "| TOML key | Flag | Environment variable | Type | Default |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| `{item.name}` | {flags} | `{item.variable}` | {kind} | {default} |\n"
    )


def _portable(text: str) -> str:
    """A default inside this checkout (the model repository) shown without this machine's path."""
    return text.replace(str(ROOT), "<checkout>")


def _escaped(text: str) -> str:
    """``<`` outside code spans, which Markdown would take for an HTML tag."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.config_docs", description=__doc__)
    parser.add_argument("--output", type=Path, default=DOCS, help=f"default: {DOCS}")
    args = parser.parse_args(argv)
    args.output.write_text(render())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
