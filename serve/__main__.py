"""`python -m serve --backend onnxruntime --model efficientnet_lite0 --port 50052` (see --help).

Every option may also come from a ``TORCHGRPC_<OPTION>`` variable or a TOML file (``--config``);
``--print-config`` shows what is in force and where each value came from (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from serve.config import add_arguments, load_config
from serve.config_sources import PRECEDENCE, ConfigError, effective_toml
from serve.errors import START_UP_ERRORS
from serve.logs import configure_logging
from serve.process_limits import raise_open_files_limit
from serve.server import run
from serve.workers import run_workers

log = logging.getLogger("serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve",
        description="Serve exported models over gRPC.",
        epilog=f"Each option may also be set in the environment or a TOML file; precedence: "
        f"{PRECEDENCE}. See docs/configuration.md.",
    )
    add_arguments(parser)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings in force as TOML, each with where its value came from, and exit",
    )
    args = parser.parse_args(argv)
    try:
        loaded = load_config(args, os.environ)
    except ConfigError as error:
        # One line, as argparse's own errors end, without its usage block of every option.
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    config = loaded.config
    configure_logging(config.log_level, config.log_format)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    if args.print_config:
        sys.stdout.write(effective_toml(loaded))
        return 0
    raise_open_files_limit()
    try:
        if config.workers > 1:
            with tempfile.TemporaryDirectory(prefix="torchgrpc-workers-") as folder:
                run_workers(config, Path(folder))
        else:
            run(config)
    except START_UP_ERRORS as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
