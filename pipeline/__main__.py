"""`python -m pipeline <step> --name value ...`: the one way every entry point is started.

A user's mistake ends here as one `error:` line on stderr and exit status 2 (the step's MLflow
run, if it had one, is already marked FAILED with the message); Ctrl-C ends with status 130
and the run marked KILLED.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

from pipeline import console
from pipeline.cli import parse_cli
from pipeline.errors import UserError
from pipeline.parsers import boolean
from pipeline.settings import STEP_SETTINGS

STEPS = list(STEP_SETTINGS)


def step_doc(step: str) -> str:
    """The step module's docstring, read without importing it (torch and mlflow load slowly)."""
    origin = importlib.util.find_spec(f"pipeline.steps.{step}").origin
    return ast.get_docstring(ast.parse(Path(origin).read_text())) or step


def command_line() -> argparse.ArgumentParser:
    """`python -m pipeline --help`: the steps, each with the first line of its docstring
    (`python -m pipeline <step> --help` lists that step's settings)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Transfer learning on chest X-rays, one step at a time; python -m pipeline STEP --help lists a step's settings.",
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP")
    for step in STEPS:
        steps.add_parser(step, help=step_doc(step).splitlines()[0].partition(": ")[2])
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `mlflow run` cancels a run with SIGTERM: end it like Ctrl-C, with the run marked KILLED.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not argv or argv[0] not in STEPS + ["-h", "--help"]:
            given = repr(argv[0]) if argv else "nothing"
            raise UserError(f"the first argument must be a step ({', '.join(STEPS)}), got {given}; python -m pipeline --help lists them")
        if argv[0] in ("-h", "--help"):
            command_line().print_help()
            return
        *settings, console_settings = parse_cli(
            argv[1:], *STEP_SETTINGS[argv[0]], prog=f"python -m pipeline {argv[0]}", description=step_doc(argv[0])
        )
        console.configure(console_settings.quiet)
        importlib.import_module(f"pipeline.steps.{argv[0]}").main(*settings)
    except UserError as e:
        if _report_to_launcher(str(e)):  # a launched worker: the launcher says it, once
            sys.exit(2)
        if os.environ.get("RANK", "0") != "0":  # a worker of a torchrun started by hand: rank 0 says it
            sys.exit(2)
        print(f"error: {e}", file=sys.stderr)
        _fail_pending_run(str(e), "FAILED", run_name_of(argv))
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the run is marked KILLED; what it logged is kept", file=sys.stderr)
        _fail_pending_run("interrupted (Ctrl-C)", "KILLED", run_name_of(argv))
        sys.exit(130)


def run_name_of(argv: list[str]) -> str:
    """The name a run of this command line gets (`<backbone>-<mode>-<step>`), read from the raw
    arguments, since the settings may be what failed to parse."""
    step = argv[0] if argv and argv[0] in STEPS else "pipeline"
    raw = dict(zip(argv[1::2], argv[2::2]))
    backbone = raw.get("--backbone")
    if backbone is None:
        return step
    try:
        mode = "frozen" if boolean("frozen", raw.get("--frozen", "true")) else "finetune"
    except UserError:
        mode = "unknown"
    return f"{backbone}-{mode}-{step}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_to_launcher(message: str) -> bool:
    if "CXR_WORKER_ERROR_FILE" not in os.environ:  # not a launched worker: no need to import torch
        return False
    from pipeline.distributed import report_error

    return report_error(message)


def _fail_pending_run(message: str, status: str, name: str) -> None:
    from pipeline import tracking

    tracking.fail_pending_run(message, status, name)


if __name__ == "__main__":
    main()
