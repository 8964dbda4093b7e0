"""`python -m serve --backend onnxruntime --model efficientnet_lite0 --port 50052` (see --help)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from serve.config import add_arguments, config_from_args
from serve.errors import TorchgrpcError
from serve.logs import configure_logging
from serve.process_limits import raise_open_files_limit
from serve.server import run
from serve.workers import run_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve", description="Serve exported models over gRPC."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    configure_logging(config.log_level, config.log_format)
    raise_open_files_limit()
    try:
        if config.workers > 1:
            with tempfile.TemporaryDirectory(prefix="torchgrpc-workers-") as folder:
                run_workers(config, Path(folder))
        else:
            run(config)
    except (TorchgrpcError, OSError, RuntimeError, TimeoutError) as error:
        logging.getLogger("serve").error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
