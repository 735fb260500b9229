"""Every number and figure of README in one command: the report's five runs, then plot.py.

    python reproduce.py                  # the five default commands one after another (and
                                         # README's first look: mlp.py one epoch without and
                                         # with BN), then plot.py
    python reproduce.py --epochs 1       # a quick check, in runs/epochs_1/ (figures there too)
    python reproduce.py --experiments    # then also `python experiments.py all`

Each run is the script's own command with its defaults (`python cnn.py --bn --out
runs/cnn_bn`), so its numbers are exactly those of the individual commands. Run again after an
interruption, it skips finished runs (a history.json with every epoch and the same config, older
histories included) and continues an interrupted one with --resume; a folder that holds a run
with another config is reported and left alone. At the end: plot.py's table and README's
reproduction table (report_table), both also in table.md, and, once all five runs are finished,
report_runs.json: each run's command, numbers, times, CPU and threads, README's table's source.

The full runs write the committed record: figures/ (plot.py --figures figures), results/
report_runs.json and, with --experiments, the studies' results/ and figures (experiments.py
--out results --figures figures). A quick check (--epochs N) writes all of that into
<out>/epochs_N/ instead, never into the record.
"""
import argparse
import datetime
import json
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import plot
import plumbing
import registry
import solver

RUNS = [("mlp", []), ("mlp", ["--bn"]), ("cnn", []), ("cnn", ["--bn"]), ("resnet", [])]
FIRST_LOOK = [("mlp", ["--epochs", "1"]), ("mlp", ["--bn", "--epochs", "1"])]   # README's
# first look in seconds: one epoch without and with BN, in <runs>/first_look/ (not plotted)
REPORT = {  # the report's final accuracy and time for each command, for the table
    "mlp": "97.6%, 14 min", "mlp_bn": "98.3%, 17 min", "cnn": "98.3%, 24 min",
    "cnn_bn": "98.3%, 38 min", "resnet_bn": "best 99.46%, 60 epochs"}


def parse_args(argv=None):
    # each help names its default itself: several depend on --epochs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data",
                        help="a folder holding MNIST/raw/ (default: data)")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto",
                        help="passed to every script (default: auto, a GPU where there is one)")
    parser.add_argument("--out", default="runs", help="the folder of the runs (default: runs)")
    parser.add_argument("--figures", default=None,
                        help="where plot.py writes (default: figures, or <runs>/figures with "
                             "--epochs)")
    parser.add_argument("--epochs", type=plumbing.positive_int, default=None,
                        help="passed to every script: a quick check, in <out>/epochs_N/ of its own "
                             "(default: each script's own epochs)")
    parser.add_argument("--results", default=None,
                        help="where report_runs.json goes, and with --experiments the studies' "
                             "JSON (default: results, or <runs> with --epochs, the studies' "
                             "JSON in <runs>/experiments)")
    parser.add_argument("--experiments", action="store_true",
                        help="also run `experiments.py all` (its --quick mode with --epochs)")
    parser.add_argument("--jobs", type=plumbing.positive_int, default=None,
                        help="passed to `experiments.py all`: its trainings run at once "
                             "(default: experiments.py's, the cores on a CPU, 1 on a GPU and "
                             "with --epochs)")
    args = parser.parse_args(argv)
    args.command = plumbing.command_line("reproduce.py", argv)
    args.runs_dir = Path(args.out) / f"epochs_{args.epochs}" if args.epochs else Path(args.out)
    quick = args.epochs is not None   # a quick check: nothing of it goes into the record
    if args.figures is None:
        args.figures = args.runs_dir / "figures" if quick else Path("figures")
    if args.results is None:
        args.results = args.runs_dir if quick else Path("results")
    return args


class Run:
    """One of the five commands: its script, flags, folder and the config it will train with."""

    def __init__(self, name, flags, args, folder=None):
        self.name, self.script = name, registry.model_script(name)
        self.flags = flags + (["--epochs", str(args.epochs)] if args.epochs else [])
        parsed = solver.parse_args(name, self.script.config, self.flags)
        self.label = solver.run_label(name, parsed.norm)
        self.out = solver.run_folder(name, parsed.norm, root=folder or args.runs_dir)
        self.config = solver.effective_config(self.script.config, parsed)
        self.command = ["python", f"{name}.py", *self.flags, "--data-dir", str(args.data_dir),
                        "--device", args.device, "--out", str(self.out)]
        self.shown = " ".join(["python", f"{name}.py", *self.flags])   # as a reader types it

    def history(self):
        """The run's history.json, or None."""
        try:
            history = json.loads((self.out / "history.json").read_text())
        except (OSError, ValueError):
            return None
        return history if isinstance(history, dict) else None

    def state(self):
        """'new', 'resume', 'done' or 'other' (the folder holds a run with another config)."""
        history = self.history()
        if history is None:
            return "new"
        if history.get("config") != self.config:
            return "other"
        if len(history["test"]["epoch"]) == self.config["max_epoch"]:
            return "done"
        return "resume" if (self.out / "checkpoint.pt").exists() else "new"

    def epochs_left(self):
        history = self.history() if self.state() in ("resume", "done") else None
        return self.config["max_epoch"] - (len(history["test"]["epoch"]) if history else 0)


def time_left(runs):
    """(seconds still to train, names of scripts with epochs left but none timed yet).

    The seconds come from the epoch times measured so far per script, over all its runs."""
    epoch_time = {}
    for run in runs:
        history = run.history()
        if history and history.get("epoch_time_s") and run.state() != "other":
            epoch_time.setdefault(run.name, []).extend(history["epoch_time_s"])
    seconds, untimed = 0.0, []
    for run in runs:
        left = run.epochs_left()
        if left and run.name in epoch_time:
            seconds += left * sum(epoch_time[run.name]) / len(epoch_time[run.name])
        elif left and run.name not in untimed:
            untimed.append(run.name)
    return seconds, untimed


def run_one(command, stop_message):
    """Run a child command in its own session; Ctrl-C or SIGTERM here stops it the same way."""
    child = subprocess.Popen([sys.executable, *command[1:]], start_new_session=True)
    try:
        code = child.wait()
    except KeyboardInterrupt as stop:   # Ctrl-C or SIGTERM (plumbing.Terminated): pass it on, once
        terminated = isinstance(stop, plumbing.Terminated)
        child.send_signal(signal.SIGTERM if terminated else signal.SIGINT)
        child.wait()
        raise
    if code != 0:
        raise plumbing.SolverError(f"`{' '.join(command)}` stopped with exit status {code} "
                                   f"(its message is above); {stop_message()}")


# ----------------------------------------------------------------------------- report_runs.json

def significant(value, digits=4):
    """`value` rounded to `digits` significant digits (a loss: 0.06081, not 0.0608)."""
    return float(f"{value:.{digits}g}")


def run_summary(run, wall_time):
    """One finished run's entry of report_runs.json: its history.json's numbers, rounded as the
    tables show them, its wall time (None if it was not timed) and where it trained."""
    history = run.history()
    return {
        "command": run.shown, "report": REPORT[run.label],
        "epochs": len(history["test"]["epoch"]), "params": history["params"],
        "final_test_acc": round(history["test"]["acc"][-1], 4),
        "best_test_acc": round(history["best_test_acc"], 4),
        "final_test_loss": significant(history["test"]["loss"][-1]),
        "iterations_to_90_train_acc": plot.converge_iteration(history, 0.90),   # None: never
        "iterations_to_98_train_acc": plot.converge_iteration(history, 0.98),
        "train_time_s": round(history["train_time_s"]),
        "wall_time_s": None if wall_time is None else round(wall_time),
        "device": history["device"],
        "cpu": history.get("cpu"),   # None for a run saved before history.json recorded it
        "threads": history["threads"],
    }


def report_summary(runs, wall_times, command, first_look=()):
    """report_runs.json's content: the finished runs by label, the first look's, and where the
    numbers came from."""
    return {
        "provenance": {"command": command, "torch": torch.__version__,
                       "python": platform.python_version(),
                       "date": datetime.date.today().isoformat()},
        "runs": {run.label: run_summary(run, wall_times.get(run.label))
                 for run in runs if run.state() == "done"},
        "first_look": {run.label: {key: value for key, value in run_summary(run, None).items()
                                   if key not in ("report", "wall_time_s")}
                       for run in first_look if run.state() == "done"},
    }


def report_table(summary):
    """README's reproduction table, in Markdown, from report_runs.json's content (`summary`):
    a row per run, then one line saying where the runs trained."""
    rows = ["| command | report | epochs | ours: final (best) test accuracy "
            "| iterations to 98% train acc | training time (wall time) |",
            "| --- | --- | ---: | --- | ---: | --- |"]
    for entry in summary["runs"].values():
        to_98 = entry["iterations_to_98_train_acc"]
        wall = entry["wall_time_s"]
        rows.append("| " + " | ".join([
            f"`{entry['command']}`", entry["report"], str(entry["epochs"]),
            f"{entry['final_test_acc']:.2%} ({entry['best_test_acc']:.2%})",
            "never" if to_98 is None else f"{to_98:,}",
            registry.format_time(entry["train_time_s"])
            + ("" if wall is None else f" ({registry.format_time(wall)})"),
        ]) + " |")
    return "\n".join(rows) + "\n\n" + where_trained(summary) + "\n"


def first_look_table(summary):
    """README's first look: one epoch of the MLP without and with BN, from report_runs.json."""
    rows = ["| command | test accuracy after one epoch | training time |", "| --- | ---: | ---: |"]
    rows += [f"| `{entry['command']}` | {entry['final_test_acc']:.2%} "
             f"| {registry.format_time(entry['train_time_s'])} |"
             for entry in summary["first_look"].values()]
    return "\n".join(rows) + "\n\n" + where_trained(summary, "first_look") + "\n"


def where_trained(summary, part="runs"):
    """'Trained on <CPU> with N threads, torch X.': the runs are named only where they differ
    (the last digits of a run depend on the CPU type and the thread count)."""
    machines = {}   # (device, cpu, threads) -> the labels of the runs trained there
    for label, entry in summary[part].items():
        machine = (entry["device"], entry["cpu"] or "a CPU not recorded", entry["threads"])
        machines.setdefault(machine, []).append(label)
    parts = []
    for (device, cpu, threads), labels in machines.items():
        where = cpu if device == "cpu" else f"{device} (host CPU: {cpu})"
        named = f" ({', '.join(labels)})" if len(machines) > 1 else ""
        parts.append(f"{where} with {threads} thread{'' if threads == 1 else 's'}{named}")
    return f"Trained on {'; '.join(parts)}; torch {summary['provenance']['torch']}."


# ----------------------------------------------------------------------------- the command

def main(argv=None):
    args = parse_args(argv)
    stop_message = lambda: (f"finished epochs and runs are kept in {args.runs_dir}; "
                            f"continue with:\n  {args.command}")
    with plumbing.one_line_failures(stop_message):
        reproduce(args, stop_message)


def planned_runs(args):
    """The five report runs, then (full runs only: a quick check is itself a first look) the
    first look's two, in <runs>/first_look/."""
    runs = [Run(name, flags, args) for name, flags in RUNS]
    if not args.epochs:
        runs += [Run(name, flags, args, folder=args.runs_dir / "first_look")
                 for name, flags in FIRST_LOOK]
    return runs


def reproduce(args, stop_message):
    runs = planned_runs(args)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    times_path = args.runs_dir / "wall_times.json"   # each command's wall time, over resumes
    wall_times = json.loads(times_path.read_text()) if times_path.exists() else {}
    others = [run for run in runs if run.state() == "other"]
    start = time.perf_counter()
    for number, run in enumerate(runs, 1):
        state, shown = run.state(), " ".join(run.command)
        if state in ("done", "other"):
            why = ("already finished" if state == "done"
                   else "its folder holds a run with another config")
            print(f"[{number}/{len(runs)}] skipping {shown}: {why}", flush=True)
            continue
        seconds, untimed = time_left([r for r in runs if r not in others])
        estimate = f", about {registry.format_time(seconds)} of training left" if seconds else ""
        if seconds and untimed:
            estimate += f" (and {', '.join(untimed)}, not timed yet)"
        resume = " --resume" if state == "resume" else ""
        print(f"\n[{number}/{len(runs)}] {shown}{resume}{estimate}", flush=True)
        run_start = time.perf_counter()
        run_one(run.command + (["--resume"] if state == "resume" else []), stop_message)
        wall_times[run.label] = wall_times.get(run.label, 0) + time.perf_counter() - run_start
        plumbing.save_files({times_path: plumbing.json_writer(wall_times)})

    report_runs, first_look = runs[:len(RUNS)], runs[len(RUNS):]
    finished = [run for run in report_runs if run.state() == "done"]
    if finished:
        print(f"\nplot.py on {len(finished)} runs, figures into {args.figures}", flush=True)
        run_one(["python", "plot.py", *(str(r.out) for r in finished),
                 "--figures", str(args.figures), "--data-dir", str(args.data_dir)], stop_message)
        summary = report_summary(report_runs, wall_times, args.command, first_look)
        table = report_table(summary)
        table_path = Path(args.figures) / "table.md"   # plot.py's table, then this one
        table_path.write_text(table_path.read_text() + "\n" + table)
        print(table)
        save_summary(summary, len(RUNS), len(first_look), args.results)
    if args.experiments:
        run_one(experiments_command(args), stop_message)
    print(f"reproduce.py: {registry.format_time(time.perf_counter() - start)} in this call")
    if others:
        raise plumbing.SolverError(
            "not overwritten, since they hold runs with another config: "
            + ", ".join(str(run.out) for run in others) + "; move them away or use another --out")


def save_summary(summary, n_runs, n_first_look, results_dir):
    """<results>/report_runs.json, once every run has finished: a record never lacks a run."""
    finished = len(summary["runs"]) + len(summary["first_look"])
    if finished < n_runs + n_first_look:
        print(f"report_runs.json not written: {finished} of {n_runs + n_first_look} runs "
              "finished")
        return
    path = Path(results_dir) / "report_runs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    plumbing.save_files({path: plumbing.json_writer(summary)})
    print(f"wrote {path}")


def experiments_command(args):
    """`python experiments.py all`, with every folder named: the record's (--results, figures)
    for the full runs, <runs>/ with --quick for a quick check."""
    if args.epochs:
        where = ["--quick", "--out", str(args.runs_dir / "experiments")]
    else:
        where = ["--out", str(args.results)]
    # without --jobs, experiments.py picks: the cores on a CPU, one job on a GPU or with --quick
    jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
    return ["python", "experiments.py", "all", *where, "--figures", str(args.figures), *jobs,
            "--data-dir", str(args.data_dir), "--device", args.device]


if __name__ == "__main__":
    main()
