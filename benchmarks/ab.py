"""`python -m benchmarks.ab --base REV`: this checkout's server against another revision's.

An optimisation worth a few percent is smaller than this machine's drift within a minute, so one
server measured after the other proves nothing. This starts both (the other from a temporary git
worktree, on the same artifacts) and drives them in alternating rounds of one run, reporting
each round and the medians.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.bench import measure
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, SAMPLE_IMAGES
from serve.auth import read_tokens
from serve.client.channels import ChannelSecurity
from serve.config import DEFAULT_ARTIFACTS

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A temporary checkout of ``revision``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="torchgrpc-ab-") as folder:
        path = Path(folder) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(path), revision],
                       check=True, capture_output=True)  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)],
                           check=False, capture_output=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument(
        "--base-artifacts",
        type=Path,
        help="the base revision's model folder, where its layout differs from this checkout's "
        "(export it with the base revision's exporter); default: --artifacts",
    )
    parser.add_argument(
        "--args",
        default="",
        help="more options for this checkout's server, e.g. '--auth-token-file /tmp/t.txt' "
        "(the same revision as --base then measures what the options cost); a lone option "
        "needs the = form: --args=--access-log",
    )
    parser.add_argument("--base-args", default="", help="more options for the base's server")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="send the file's first token to both servers (a server without auth ignores it, "
        "so both clients do the same work)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    image = (SAMPLE_IMAGES / "cat.jpg").read_bytes()
    arguments = ["--model", args.model, "--backend", args.backend]
    base_artifacts = (args.base_artifacts or args.artifacts).resolve()
    base_arguments = [*arguments, "--artifacts", str(base_artifacts), *shlex.split(args.base_args)]
    this_arguments = [*arguments, "--artifacts", str(args.artifacts.resolve()),
                      *shlex.split(args.args)]  # fmt: skip
    security = ChannelSecurity(
        token=None if args.token_file is None else read_tokens(args.token_file)[0]
    )
    results: dict[str, list[tuple[float, float]]] = {args.base: [], "this checkout": []}
    with (
        worktree(args.base) as base_tree,
        ServerProcess(base_arguments, cwd=base_tree) as base,
        ServerProcess(this_arguments, cwd=ROOT) as this,
    ):
        servers = {args.base: base, "this checkout": this}
        for round_number in range(1, args.rounds + 1):
            for name, server in servers.items():
                result = measure(server.address, "tutorial", [image], args.concurrency,
                                 duration=args.seconds, security=security)  # fmt: skip
                figures = (result.images_per_second, result.percentile_ms(50))
                results[name].append(figures)
                print(f"round {round_number}  {name:>14}: {figures[0]:7.1f} img/s  "
                      f"p50 {figures[1]:7.2f} ms  errors {result.errors}", flush=True)  # fmt: skip
    for name, rounds in results.items():
        print(f"median  {name:>14}: {statistics.median(r[0] for r in rounds):7.1f} img/s  "
              f"p50 {statistics.median(r[1] for r in rounds):7.2f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
