"""`python -m pipeline <step> --name value ...`: the one way every entry point is started.

A user's mistake ends here as one `error:` line on stderr and exit status 2 (the step's MLflow
run, if it had one, is already marked FAILED with the message); Ctrl-C ends with status 130
and the run marked KILLED.
"""

from __future__ import annotations

import importlib
import signal
import sys

from pipeline.config import STEP_SETTINGS, UserError, parse_cli

STEPS = list(STEP_SETTINGS)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STEPS:
        given = repr(argv[0]) if argv else "nothing"
        print(f"error: the first argument must be a step ({', '.join(STEPS)}), got {given}", file=sys.stderr)
        sys.exit(2)
    # `mlflow run` cancels a run with SIGTERM: end it like Ctrl-C, with the run marked KILLED.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        settings = parse_cli(argv[1:], *STEP_SETTINGS[argv[0]])
        importlib.import_module(f"pipeline.steps.{argv[0]}").main(*settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        _fail_pending_run(str(e), "FAILED")
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the run is marked KILLED; what it logged is kept", file=sys.stderr)
        _fail_pending_run("interrupted (Ctrl-C)", "KILLED")
        sys.exit(130)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _fail_pending_run(message: str, status: str) -> None:
    from pipeline import tracking

    tracking.fail_pending_run(message, status)


if __name__ == "__main__":
    main()
