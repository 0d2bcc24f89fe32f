"""``python -m sweep.benchmarks [--quick]``: run every benchmark, write bench/results.md and
the table between the bench markers in README.md."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sweep.benchmarks.common import machine

ROOT = Path(__file__).resolve().parents[2]


def _replay_label(pr: dict, n: int) -> str:
    if "curves" not in pr:  # results saved before the curves were the template's
        return (
            f"Pruners replayed on the curves of unpruned default studies ({n} sampler "
            f"seeds, {pr['n_trials']} trials): median share of the time taken, seeds "
            "where the best trial was kept (where TPE would propose the same trials, "
            "so the best val is the unpruned one)"
        )
    patience = pr.get("early_stopping")
    stopping = f"early stopping (patience {patience})" if patience else "no early stopping"
    return (
        f"Pruners and early stopping replayed on the template-style search's trials (the "
        f"default study unpruned, without early stopping; {n} sampler seeds, "
        f"{pr['n_trials']} trials), each pruner with the default's {stopping}: median "
        "share of that search's time taken, seeds where its best val was kept (where TPE "
        "would propose the same trials, so the replay is what the study finds)"
    )


def cli_help_seconds(repetitions: int = 5) -> float:
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweep", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare_runs_seconds(n_runs: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweep" / "benchmarks" / "compare_runs.py"),
            "--runs",
            str(n_runs),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_time_rows(s: dict) -> list[tuple[str, str, str]]:
    """What the speed buys: our study given the template-style study's wall time."""
    st = s.get("ours_same_time")
    if not st:  # results saved before this arm existed
        return []
    template = s["baseline"].get("per_seed", [s["baseline"]])
    pairs = zip(template, st.get("per_seed", [st]), strict=True)
    return [
        (
            "In the template-style study's wall time (per seed), ours on 1 worker: "
            "trials finished, best val acc (per seed: template-style / ours)",
            f"{st['trials']:.0f} trials ({st['pruned']:.0f} pruned) in {st['wall_s']:.0f} s "
            f"(the running trial finishes), best val "
            f"{st['best_val']:.4f}, test {st['best_test']:.4f}; ours >= template on "
            f"{st.get('seeds_at_least_baseline', '?')} of {len(s.get('seeds', [0]))} seeds ("
            + "; ".join(f"{b['best_val']:.4f} / {o['best_val']:.4f}" for b, o in pairs)
            + ")",
            "",
        ),
        *_match_rows(s, template, st),
    ]


def _match_rows(s: dict, template: list[dict], st: dict) -> list[tuple[str, str, str]]:
    """How soon each study first equalled the template-style study's best val."""
    if "match_speedup" not in st:  # results saved before this was measured
        return []
    seeds = zip(template, st["per_seed"], strict=True)
    each = "; ".join(
        f"{b['to_best_s']:.0f} / "
        + ("not reached" if o["to_match_s"] is None else f"{o['to_match_s']:.0f} s")
        for b, o in seeds
    )
    return [
        (
            "Time to the template-style study's best val, per seed: template-style (when "
            "its best trial finished) / ours (1 worker, first trial to equal it)",
            f"median of the per-seed ratios **{st['match_speedup']:.1f}x** ({each})",
            "",
        )
    ]


def _our_patience_rows(s: dict) -> list[tuple[str, str, str]]:
    """The template-style study given our early stopping, against ours on one worker."""
    ref = s.get("baseline_our_patience")
    if not ref:  # results saved before this arm existed
        return []
    seeds = zip(ref["per_seed"], s["ours"]["per_seed"], strict=True)
    return [
        (
            "The same, with the template-style study given our early stopping (patience 8, "
            "not the template's 100): wall time, template-style / ours (1 worker); best val "
            "per seed",
            f"{ref['wall_s']:.0f} s / {s['ours']['wall_s']:.0f} s = "
            f"**{s['speedup_vs_our_patience']:.1f}x**; "
            + "; ".join(f"{b['best_val']:.4f} / {o['best_val']:.4f}" for b, o in seeds)
            + f"; ours >= template on {s['ours']['seeds_at_least_baseline_our_patience']} of "
            f"{len(s.get('seeds', [0]))} seeds",
            "",
        )
    ]


def _breakdown_rows(overhead: dict) -> list[tuple[str, str, str]]:
    """Where the overhead benchmark's trial spends its time, when it was measured."""
    b = overhead.get("breakdown")
    if not b:
        return []
    ms = b["ms"]
    return [
        (
            "Where that trial's time goes, ms (timers on its steps, mean of "
            f"{b['rounds']} more rounds): trial = training steps + rest of `fit` + Optuna + "
            "our callbacks + MLflow + other; hand loop (its training steps)",
            f"{ms['trial']:.0f} = {ms['part.training_steps']:.0f} + "
            f"{ms['part.rest_of_fit']:.0f} + {ms['part.optuna']:.0f} + "
            f"{ms['part.callbacks']:.0f} + {ms['part.mlflow']:.0f} (the model "
            f"{ms.get('step.log_model', 0):.0f}) + {ms['part.other']:.0f}; "
            f"{ms['hand']:.0f} ({ms['hand_training_steps']:.0f})",
            "",
        )
    ]


def _one_thread_rows(results: dict) -> list[tuple[str, str, str]]:
    """The search at one torch thread per trial (the two-worker arm's rounding)."""
    one, two = results.get("search_1_thread"), results["search"]["ours_2_workers"]
    if not one:
        return []
    seeds = one["seeds"]
    arms = (one["baseline"]["per_seed"], one["ours"]["per_seed"], two.get("per_seed", []))
    if len(arms[2]) != len(seeds):
        return []
    each = "; ".join(
        f"{b['best_val']:.4f} / {o['best_val']:.4f} ({p['best_val']:.4f})"
        for b, o, p in zip(*arms, strict=True)
    )
    at_least = [
        sum(a["best_val"] >= b["best_val"] for a, b in zip(arm, arms[0], strict=True))
        for arm in arms[1:]
    ]
    return [
        (
            "Best val acc at one torch thread per trial, as each of 2 workers trains (a config "
            "scores slightly differently on 1 and 2 threads), per sampler seed "
            f"({', '.join(map(str, seeds))}): template-style / ours (1 worker; 2 workers, "
            "the row above's)",
            f"{each}; ours >= template on {at_least[0]} ({at_least[1]}) of {len(seeds)} seeds; "
            f"wall time {one['baseline']['wall_s']:.0f} s / {one['ours']['wall_s']:.0f} s "
            f"(median)",
            "ours >= template",
        )
    ]


def render(results: dict) -> str:
    o, s, w, c = (results[k] for k in ("overhead", "search", "workers", "compare"))
    so, sp, sb = s["ours"], s["ours_2_workers"], s["baseline"]

    def t(v):
        return "not reached" if v is None else f"{v:.0f} s"

    def per_seed(template: str) -> str:
        """One entry per sampler seed: template-style b, ours o, ours on 2 workers p."""
        arms = (a.get("per_seed", [a]) for a in (sb, so, sp))
        return "; ".join(template.format(b=b, o=o, p=p) for b, o, p in zip(*arms, strict=True))

    rows = [
        (
            "Per-trial overhead (mnist1d MLP, 30 epochs): platform trial / hand-written loop",
            f"{o['trial_s']:.2f} s / {o['hand_s']:.2f} s: median of {o['repetitions']} "
            f"interleaved rounds **{o['ratio']:.2f}x** (range {o['ratio_range'][0]:.2f}-"
            f"{o['ratio_range'][1]:.2f}); without the logged model {o['ratio_nomodel']:.2f}x "
            f"({o['ratio_nomodel_range'][0]:.2f}-{o['ratio_nomodel_range'][1]:.2f})",
            "<= 1.15x",
        ),
        *_breakdown_rows(o),
        (
            f"Search, {s['n_trials']} trials, default space: wall time, template-style / "
            f"ours (1 worker; 2 workers), median of {len(s.get('seeds', [0]))} sampler seeds",
            f"{sb['wall_s']:.0f} s / {so['wall_s']:.0f} s = **{s['speedup']:.1f}x**; "
            f"/ {sp['wall_s']:.0f} s = **{s['speedup_2_workers']:.1f}x**",
            ">= 3x",
        ),
        *_our_patience_rows(s),
        (
            f"Time to first val acc >= {s['target']}: template-style / ours (1; 2 workers)",
            f"{t(sb['to_target_s'])} / {t(so['to_target_s'])}; {t(sp['to_target_s'])}",
            "",
        ),
        (
            "Best val acc: template-style / ours (1; 2 workers)",
            f"{sb['best_val']:.4f} / {so['best_val']:.4f}; {sp['best_val']:.4f} "
            f"({so['pruned']:.0f}; {sp['pruned']:.0f} of ours pruned); ours >= template on "
            f"{so.get('seeds_at_least_baseline', '?')} ({sp.get('seeds_at_least_baseline', '?')})"
            f" of {len(s.get('seeds', [0]))} seeds",
            "ours >= template",
        ),
        (
            "Best val acc per sampler seed "
            f"({', '.join(str(x) for x in s.get('seeds', [0]))}): template-style / ours (1; 2)",
            per_seed("{b[best_val]:.4f} / {o[best_val]:.4f} ({p[best_val]:.4f})"),
            "",
        ),
        *_one_thread_rows(results),
        (
            "Wall time per sampler seed: template-style / ours (1; 2)",
            per_seed("{b[wall_s]:.0f} / {o[wall_s]:.0f} ({p[wall_s]:.0f}) s"),
            "",
        ),
        (
            "Test acc of the best-val trial: template-style / ours (1; 2 workers)",
            f"{sb['best_test']:.4f} / {so['best_test']:.4f}; {sp['best_test']:.4f}",
            "",
        ),
        *_same_time_rows(s),
        (
            f"Trials per minute (each worker's own rate, summed), 2 workers / 1 worker "
            f"({w['n_trials']} trials)",
            f"{w['two']['trials_per_min']:.1f} / {w['one']['trials_per_min']:.1f} = "
            f"**{w['ratio']:.2f}x** (whole command incl. start-up: {w['wall_ratio']:.2f}x)",
            ">= 1.7x",
        ),
        (
            f"`compare.runs()` over {c['runs']:,} runs (sqlite store)",
            f"**{c['runs_s_best']:.2f} s** (best of {len(c['runs_s_all'])}; the first call "
            f"in a fresh process, imports included: {c['runs_s_all'][0]:.2f} s; "
            f"summary(): {c['summary_s']:.2f} s)",
            "<= 5 s",
        ),
        ("`sweep --help` wall time", f"**{results['help_s']:.2f} s**", "<= 1 s"),
    ]
    pr = results.get("pruners")
    if pr:
        from sweep.benchmarks.pruners import PRUNERS, VARIANTS

        n = len(pr["seeds"])
        names = [name for name in (*PRUNERS, *VARIANTS) if name in pr]
        rows.insert(
            -3,
            (
                _replay_label(pr, n),
                "; ".join(
                    f"{name}{' (default)' if i == 0 else ''} {pr[name]['time_fraction']:.2f}, "
                    f"{pr[name]['kept_best']} of {n}"
                    + (f" ({pr[name]['tpe_path_kept']})" if "tpe_path_kept" in pr[name] else "")
                    for i, name in enumerate(names)
                ),
                "keep the best",
            ),
        )
    st = results.get("storage")
    if st:
        for key, label in (("journal", "Optuna journal file"), ("sqlite", "Optuna SQLite RDB")):
            r = st[key]
            rows.append(
                (
                    f"{label}, {st['workers']} writers x {st['per_worker']} trials",
                    f"{r['wall_s']:.1f} s, {r['complete']}/{r['trials']} complete, "
                    f"unique numbers: {r['unique_numbers']}, errors: {len(r['errors'])}",
                    "",
                )
            )
        for key, label in (
            ("mlflow_sqlite", "MLflow sqlite store"),
            ("mlflow_server", "MLflow tracking server (local, over sqlite)"),
        ):
            m = st.get(key)
            if m:
                rows.append(
                    (
                        f"{label}, {st['workers']} writers x {st['per_worker']} runs",
                        f"{m['wall_s']:.1f} s, {m['finished']}/{m['runs']} finished, "
                        f"errors: {len(m['errors'])}",
                        "",
                    )
                )
    lines = ["| benchmark | result | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {g} |" for a, b, g in rows]
    return "\n".join(lines)


def machines_line(ran_on: dict[str, str]) -> str:
    """The machine most phases ran on, then each other machine with its phases: ratios
    are taken within a phase, but the phases of one table may come from several runs."""
    by_machine: dict[str, list[str]] = {}
    for phase, where in ran_on.items():
        by_machine.setdefault(where, []).append(phase)
    ranked = sorted(by_machine, key=lambda m: -len(by_machine[m]))
    if not ranked:
        return machine()
    return ranked[0] + "".join(f"; {', '.join(by_machine[m])} on {m}" for m in ranked[1:])


def _saved_machine() -> str | None:
    """The machine in the saved bench/results.md header (``..., on MACHINE.``)."""
    saved = ROOT / "bench" / "results.md"
    found = re.search(r"`, on (.+)\.\n", saved.read_text()) if saved.exists() else None
    return found.group(1) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and trials")
    parser.add_argument(
        "--only",
        help="comma-separated phases to run again (help_s, overhead, workers, search, "
        "search_1_thread, pruners, compare, storage); the others keep their results from "
        "bench/results.json",
    )
    args = parser.parse_args()
    from sweep.benchmarks import overhead, pruners, search, storage, workers

    reps, n_search, n_workers, n_runs = (3, 8, 8, 2000) if args.quick else (15, 20, 24, 10000)
    phases = {
        "help_s": cli_help_seconds,
        "overhead": lambda: overhead.run(reps),
        "workers": lambda: workers.run(n_workers),
        "search": lambda: search.run(n_search, seeds=(0,) if args.quick else (0, 1, 2, 3, 4)),
        "search_1_thread": lambda: search.run_one_thread(
            n_search, seeds=(0,) if args.quick else (0, 1, 2, 3, 4)
        ),
        "pruners": lambda: pruners.run(n_search, seeds=(0,) if args.quick else (0, 1, 2, 3, 4)),
        "compare": lambda: compare_runs_seconds(n_runs),
        "storage": lambda: storage.run(4, 25 if args.quick else 100),
    }
    saved = ROOT / "bench" / "results.json"
    results: dict = {}
    chosen = list(phases)
    if args.only:
        chosen = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = sorted(set(chosen) - set(phases))
        if unknown:
            parser.error(f"--only: unknown phase {unknown[0]!r}; choose from {', '.join(phases)}")
        results = json.loads(saved.read_text()) if saved.exists() else {}
        missing = [p for p in phases if p not in results and p not in chosen]
        if missing:
            parser.error(f"--only: no saved results for {', '.join(missing)}; run them too")
    ran = results.setdefault("ran_at", {})
    ran_on = results.setdefault("ran_on", {})
    for name in ran:  # results saved before each phase named its machine: the header's
        ran_on.setdefault(name, _saved_machine() or machine())
    for name in chosen:
        started = time.perf_counter()
        results[name] = phases[name]()
        ran[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        ran_on[name] = machine()
        print(
            f"[{name}: {time.perf_counter() - started:.0f} s] {json.dumps(results[name])}",
            file=sys.stderr,
            flush=True,
        )
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = render(results)
    when = latest = max(ran.values())
    if len(set(ran.values())) > 1:  # phases run at different times: say when each ran
        # The time of day alone for a phase run on the latest phase's day.
        each = (f"{k}: {v[11:] if v[:10] == latest[:10] else v}" for k, v in ran.items())
        when += " (" + ", ".join(each) + ")"
    command = "make bench" + (" ARGS=--quick" if args.quick else "")
    where = machines_line(ran_on)
    text = (
        f"# Benchmarks\n\n{when}, `{command}`, on {where}.\n"
        "Ratios are medians against a baseline run in the same session.\n\n"
        f"{table}\n\n<details><summary>raw results</summary>\n\n```json\n"
        f"{json.dumps(results, indent=2, default=str)}\n```\n</details>\n"
    )
    out = ROOT / "bench" / "results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    readme = ROOT / "README.md"
    block = f"<!-- bench:start -->\n{when}, `{command}`, {where}:\n\n{table}\n<!-- bench:end -->"
    readme.write_text(
        re.sub(
            r"<!-- bench:start -->.*?<!-- bench:end -->",
            lambda _: block,
            readme.read_text(),
            flags=re.S,
        )
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
