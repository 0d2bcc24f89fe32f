"""The ``sweep`` command. Thin: parse, then call the functions the tests call too.

Heavy libraries (torch, Lightning, MLflow) are imported only by the commands that need
them, so ``sweep --help`` and config errors answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys

COMMANDS = {
    "train": "train one run: sweep train [hydra overrides]",
    "tune": "run (or resume) an Optuna study: sweep tune [hydra overrides]",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Hyperparameter search and experiment tracking for Lightning models.",
        epilog="Overrides are Hydra's: key=value, group=option, +new.key=value.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "overrides", nargs="*", help="Hydra overrides, e.g. model=cnn optimizer.lr=3e-3"
        )
    return parser


def _raise_keyboard_interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C: runs and trials are closed, not left RUNNING.
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_train(overrides: list[str]) -> int:
    from sweep.config import load_run_config
    from sweep.train import run

    cfg = load_run_config(overrides)
    result = run(cfg, overrides=overrides)
    _print_run_summary(result, cfg)
    return 0


def _print_run_summary(result, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sweep train", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"best {result.monitor} (epoch {result.best_epoch})", f"{result.value:.4f}")
    for name, value in result.test.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("parameters", f"{result.num_params:,}")
    table.add_row("fit time", f"{result.fit_seconds:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"run id: {result.run_id}  (experiment '{cfg.tracking.experiment}')")
    console.print("open it: make ui  ->  http://127.0.0.1:5000")


def main(argv: list[str] | None = None) -> int:
    from sweep.errors import SweepError

    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    handler = {"train": cmd_train, "tune": _cmd_tune}[args.command]
    try:
        return handler(args.overrides)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: runs closed; rerun the same command to resume", file=sys.stderr)
        return 130


def _cmd_tune(overrides: list[str]) -> int:
    from sweep.study import tune_command

    return tune_command(overrides)


if __name__ == "__main__":
    sys.exit(main())
