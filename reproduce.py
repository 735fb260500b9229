"""Every number and figure of README in one command: the report's five runs, then plot.py.

    python reproduce.py                  # the five default commands one after another, then plot.py
    python reproduce.py --epochs 1       # a quick check, in runs/epochs_1/ (figures there too)
    python reproduce.py --experiments    # then also `python experiments.py all`

Each run is the script's own command with its defaults (`python cnn.py --bn --out
runs/cnn_bn`), so its numbers are exactly those of the individual commands. Run again after an
interruption, it skips finished runs (a history.json with every epoch and the same config, older
histories included) and continues an interrupted one with --resume; a folder that holds a run
with another config is reported and left alone. At the end: plot.py's table, the wall time of
each run, both also in table.md.
"""
import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import plumbing
import registry
import solver

RUNS = [("mlp", []), ("mlp", ["--bn"]), ("cnn", []), ("cnn", ["--bn"]), ("resnet", [])]
REPORT = {  # the report's final accuracy and time for each command, for the table
    "mlp": "97.6%, 14 min", "mlp_bn": "98.3%, 17 min", "cnn": "98.3%, 24 min",
    "cnn_bn": "98.3%, 38 min", "resnet_bn": "best 99.46%, 60 epochs"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="a folder holding MNIST/raw/")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto")
    parser.add_argument("--out", default="runs", help="the folder of the runs")
    parser.add_argument("--figures", default=None,
                        help="where plot.py writes (default: figures, or <runs>/figures with "
                             "--epochs)")
    parser.add_argument("--epochs", type=plumbing.positive_int, default=None,
                        help="passed to every script: a quick check, in <out>/epochs_N/ of its own")
    parser.add_argument("--experiments", action="store_true",
                        help="also run `experiments.py all` (its --quick mode with --epochs)")
    args = parser.parse_args(argv)
    args.runs_dir = Path(args.out) / f"epochs_{args.epochs}" if args.epochs else Path(args.out)
    if args.figures is None:
        args.figures = args.runs_dir / "figures" if args.epochs else Path("figures")
    return args


class Run:
    """One of the five commands: its script, flags, folder and the config it will train with."""

    def __init__(self, name, flags, args):
        self.name, self.script = name, registry.model_script(name)
        self.flags = flags + (["--epochs", str(args.epochs)] if args.epochs else [])
        parsed = solver.parse_args(name, self.script.config, self.flags)
        self.label = solver.run_label(name, parsed.norm)
        self.out = solver.run_folder(name, parsed.norm, root=args.runs_dir)
        self.config = solver.effective_config(self.script.config, parsed)
        self.command = ["python", f"{name}.py", *self.flags, "--data-dir", str(args.data_dir),
                        "--device", args.device, "--out", str(self.out)]

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


def results_table(runs, wall_times):
    rows = ["| command | report | ours: final (best) test accuracy | wall time |",
            "| --- | --- | --- | --- |"]
    for run in runs:
        history = run.history()
        if not history or run.state() != "done":
            continue
        wall = wall_times.get(run.label)
        rows.append(f"| `python {run.name}.py{' ' if run.flags else ''}{' '.join(run.flags)}` "
                    f"| {REPORT[run.label]} | {history['test']['acc'][-1]:.2%} "
                    f"({history['best_test_acc']:.2%}) "
                    f"| {registry.format_time(wall) if wall else '-'} |")
    return "\n".join(rows) + "\n"


def main(argv=None):
    args = parse_args(argv)
    again = plumbing.command_line("reproduce.py", argv)
    stop_message = lambda: (f"finished epochs and runs are kept in {args.runs_dir}; "
                            f"continue with:\n  {again}")
    with plumbing.one_line_failures(stop_message):
        reproduce(args, stop_message)


def reproduce(args, stop_message):
    runs = [Run(name, flags, args) for name, flags in RUNS]
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

    finished = [run for run in runs if run.state() == "done"]
    if finished:
        print(f"\nplot.py on {len(finished)} runs, figures into {args.figures}", flush=True)
        run_one(["python", "plot.py", *(str(r.out) for r in finished),
                 "--figures", str(args.figures), "--data-dir", str(args.data_dir)], stop_message)
        table = results_table(runs, wall_times)
        table_path = Path(args.figures) / "table.md"
        table_path.write_text(table_path.read_text() + "\n" + table)
        print(table)
    if args.experiments:
        run_one(["python", "experiments.py", "all", *(["--quick"] if args.epochs else []),
                 "--data-dir", str(args.data_dir), "--device", args.device,
                 "--out", str(args.runs_dir / "experiments"), "--figures", str(args.figures)],
                stop_message)
    print(f"reproduce.py: {registry.format_time(time.perf_counter() - start)} in this call")
    if others:
        raise plumbing.SolverError(
            "not overwritten, since they hold runs with another config: "
            + ", ".join(str(run.out) for run in others) + "; move them away or use another --out")


if __name__ == "__main__":
    main()
