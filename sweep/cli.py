"""The ``sweep`` command. Thin: parse, then call the functions the tests call too.

Heavy libraries (torch, Lightning, MLflow) are imported only by the commands that need
them, so ``sweep --help`` and config errors answer at once. Each command is
``"module:function"``; the function takes the command's arguments and returns the exit
status.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

#: name -> (one-line help, "module:function" taking list[str] and returning an exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train one run: sweep train [hydra overrides]", "sweep.cli:cmd_train"),
    "tune": (
        "run or resume an Optuna study: sweep tune [hydra overrides]",
        "sweep.study:tune_command",
    ),
    "worker": (
        "join an existing study and run its trials: sweep worker [hydra overrides]",
        "sweep.workers:worker_command",
    ),
    "tracking-server": (
        "MLflow tracking server on PostgreSQL: sweep tracking-server [backend=URL] "
        "[artifacts=DIR] [host=127.0.0.1] [port=5000] [workers=4]",
        "sweep.server:server_command",
    ),
    "check": (
        "compare a study in Optuna with its runs in MLflow: sweep check study.name=...",
        "sweep.check:check_command",
    ),
    "serve": (
        "serve a model over HTTP (MLflow scoring server): "
        "sweep serve [model=URI] [port=5001] [host=127.0.0.1]",
        "sweep.deploy:serve_command",
    ),
    "predict": (
        "predict a CSV/Parquet file: sweep predict model=URI input=FILE output=FILE "
        "[chunk_size=N] [proba=true]",
        "sweep.deploy:predict_command",
    ),
    "rerun": (
        "re-train exactly what a logged run trained: sweep rerun RUN_ID [hydra overrides]",
        "sweep.rerun:rerun_command",
    ),
    "compare": (
        "compare experiments and studies: sweep compare experiments=[a,b] "
        "[studies=[...]] [states=[COMPLETE,PRUNED]] [filter=...] [limit=50]",
        "sweep.compare:compare_command",
    ),
    "report": (
        "write a study's HTML dashboard: sweep report study.name=... [sweep overrides] "
        "[--out DIR] [--no-log]",
        "sweep.report:report_command",
    ),
    "optuna-dashboard": (
        "optuna-dashboard over the study storage: sweep optuna-dashboard [sweep overrides] "
        "[--host 127.0.0.1] [--port 8080]",
        "sweep.report:optuna_dashboard_command",
    ),
}


#: What Ctrl-C / SIGTERM leaves behind, per command.
INTERRUPTED = {
    "train": "the run is closed as KILLED",
    "tune": "trials and runs closed; rerun the same command to resume",
    "worker": "trials and runs closed; rerun the same command to resume",
    "rerun": "the new run is closed as KILLED",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Hyperparameter search and experiment tracking for Lightning models.",
        epilog="Overrides are Hydra's: key=value, group=option, +new.key=value.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help="overrides or command options")
    return parser


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
    table.add_row(
        f"best {result.monitor} (epoch {(result.best_epoch or 0) + 1}/{result.epochs_run})",
        f"{result.value:.4f}",
    )
    for name, value in result.test.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("parameters", f"{result.num_params:,}")
    table.add_row("fit time", f"{result.fit_seconds:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"run id: {result.run_id}  (experiment '{cfg.tracking.experiment}')")
    console.print("open it: make ui  ->  http://127.0.0.1:5000")


def main(argv: list[str] | None = None) -> int:
    from sweep.errors import SweepError, disk_full
    from sweep.interrupts import raise_keyboard_interrupt, taken

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _parser().parse_args(argv)  # prints help, or the usage error and exits 2
        return 2
    command, rest = argv[0], argv[1:]
    if rest[:1] in (["-h"], ["--help"]):
        print(f"sweep {command}: {COMMANDS[command][0]}")
        return 0
    # SIGTERM takes the same path as Ctrl-C: runs and trials are closed, not left RUNNING.
    caught = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, raise_keyboard_interrupt) for s in caught}
    module_name, function_name = COMMANDS[command][1].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    try:
        return handler(rest)
    except SweepError as exc:
        if "sweep.tracking" in sys.modules:  # a command that set up the store
            sys.modules["sweep.tracking"].remove_new_empty_stores()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if (full := disk_full(exc)) is None:
            raise
        print(f"error: {full}", file=sys.stderr)  # whatever the command was writing
        return 1
    except KeyboardInterrupt:
        taken()
        print(f"interrupted: {INTERRUPTED.get(command, 'stopped')}", file=sys.stderr)
        return 130
    finally:
        for signum, previous in before.items():  # as they were: main() may run in-process
            signal.signal(signum, previous)
        if "sweep.tracking" in sys.modules:  # a command that opened the store
            sys.modules["sweep.tracking"].checkpoint_stores()


if __name__ == "__main__":
    sys.exit(main())
