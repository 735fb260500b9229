"""reproduce.py on the tiny IDX data: the five runs and plot.py end to end, skipping what is
done, resuming what was interrupted, refusing to overwrite a run with another config; the
report_runs.json and README table it makes of them; the record (results/, figures/) written by
the full runs only."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import plot
import plumbing
import registry
import reproduce


def reproduce_cmd(tiny_mnist, out, *flags):
    return [sys.executable, "reproduce.py", "--data-dir", str(tiny_mnist), "--device", "cpu",
            "--out", str(out), *flags]


def run_in_process(command, stop_message):
    """reproduce.run_one without a child process: `python <script>.py ...` called right here.

    The process boundary itself (signals passed on to the child) is tested with a real
    subprocess below; the rest of reproduce.py is the same either way, and seconds faster."""
    script, argv = command[1].removesuffix(".py"), command[2:]
    if script == "plot":
        main = plot.main
    else:
        model = registry.model_script(script)
        main = lambda argv: model.solver.train_run(
            script, model.build_model, model.config,
            model.solver.parse_args(script, model.config, argv))
    try:
        main(argv)
    except SystemExit as stop:
        if stop.code:
            raise plumbing.SolverError(f"`{' '.join(command)}` stopped with exit status "
                                       f"{stop.code}; {stop_message()}") from None


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(reproduce, "run_one", run_in_process)


@pytest.fixture
def in_process_plot_recorded(monkeypatch):
    """As in_process, but plot.py's command is only recorded (its figures are test_plot.py's and
    the first test's): the list of plot.py commands reproduce.py gave."""
    plotted = []

    def run_one(command, stop_message):
        if command[1] == "plot.py":   # what reproduce.py reads of its output: table.md
            plotted.append(command)
            figures = Path(command[command.index("--figures") + 1])
            figures.mkdir(parents=True, exist_ok=True)
            (figures / "table.md").write_text("")
        else:
            run_in_process(command, stop_message)
    monkeypatch.setattr(reproduce, "run_one", run_one)
    return plotted


def reproduce_here(argv):
    """reproduce.py's work in this process: a failure raises SolverError, no signal is touched
    (the command line's handling is tested with a real subprocess below)."""
    args = reproduce.parse_args(argv)
    reproduce.reproduce(args, lambda: f"kept in {args.runs_dir}")



def test_epochs_1_runs_all_five_then_plots_and_a_second_call_skips_them(
        tiny_mnist, tmp_path, capsys, monkeypatch, in_process):
    here = tmp_path / "cwd"   # the working directory: a quick check writes nothing into it
    here.mkdir()
    monkeypatch.chdir(here)
    argv = reproduce_cmd(tiny_mnist, tmp_path, "--epochs", "1")[2:]
    reproduce_here(argv)
    runs = tmp_path / "epochs_1"   # a folder of its own, never mixed with the full runs
    for label in ("mlp", "mlp_bn", "cnn", "cnn_bn", "resnet_bn"):
        history = json.loads((runs / label / "history.json").read_text())
        assert history["test"]["epoch"] == [1] and history["config"]["max_epoch"] == 1
    table = (runs / "figures" / "table.md").read_text()
    assert "| MLP with BN |" in table and "| `python cnn.py --bn --epochs 1` |" in table
    assert (runs / "figures" / "cnn_bn_vs_no_bn.png").exists()
    out = capsys.readouterr().out
    assert "[5/5]" in out and "wall time" in out
    summary = json.loads((runs / "report_runs.json").read_text())
    assert report_table_of(summary) in table   # the table under plot.py's is report_table's
    assert list(here.iterdir()) == []          # no results/, no figures/: the record untouched

    # a second call skips every finished run and trains nothing again
    commands = []   # the second call's commands, recorded: plot.py was drawn above already
    monkeypatch.setattr(reproduce, "run_one", lambda command, stop_message: commands.append(command))
    reproduce_here(argv + ["--experiments"])
    out = capsys.readouterr().out
    assert out.count("already finished") == 5 and "another config" not in out
    assert [command[1] for command in commands] == ["plot.py", "experiments.py"]   # no training
    experiments = commands[1]   # a quick check's studies: --quick, into the runs' folder too
    assert "--quick" in experiments and str(runs / "experiments") in experiments
    assert experiments[experiments.index("--figures") + 1] == str(runs / "figures")
    assert list(here.iterdir()) == []


def report_table_of(summary):
    """reproduce.report_table, checked against the summary it renders: a row per run with its
    numbers, and the line naming this machine."""
    table = reproduce.report_table(summary)
    for entry in summary["runs"].values():
        row = next(line for line in table.splitlines() if f"`{entry['command']}`" in line)
        assert f"{entry['final_test_acc']:.2%} ({entry['best_test_acc']:.2%})" in row
        assert f"| {entry['report']} | {entry['epochs']} |" in row
    assert f"Trained on {plumbing.cpu_name()} with 1 thread;" in table   # conftest's one thread
    return table


def test_report_runs_json_holds_each_runs_numbers_from_its_history(
        tiny_mnist, tmp_path, capsys, in_process_plot_recorded):
    reproduce_here(reproduce_cmd(tiny_mnist, tmp_path, "--epochs", "1")[2:])
    runs = tmp_path / "epochs_1"
    summary = json.loads((runs / "report_runs.json").read_text())
    wall_times = json.loads((runs / "wall_times.json").read_text())
    assert set(summary) == {"provenance", "runs", "first_look"}
    assert summary["first_look"] == {}   # a quick check is itself a first look
    assert set(summary["provenance"]) == {"command", "torch", "python", "date"}
    assert summary["provenance"]["torch"] == torch.__version__
    assert "--epochs 1" in summary["provenance"]["command"]
    assert list(summary["runs"]) == ["mlp", "mlp_bn", "cnn", "cnn_bn", "resnet_bn"]
    commands = {"mlp": "python mlp.py", "mlp_bn": "python mlp.py --bn", "cnn": "python cnn.py",
                "cnn_bn": "python cnn.py --bn", "resnet_bn": "python resnet.py"}
    for label, entry in summary["runs"].items():
        history = json.loads((runs / label / "history.json").read_text())
        assert entry == {
            "command": f"{commands[label]} --epochs 1", "report": reproduce.REPORT[label],
            "epochs": 1, "params": history["params"],
            "final_test_acc": round(history["test"]["acc"][-1], 4),
            "best_test_acc": round(history["best_test_acc"], 4),
            "final_test_loss": float(f"{history['test']['loss'][-1]:.4g}"),
            "iterations_to_90_train_acc": plot.converge_iteration(history, 0.90),
            "iterations_to_98_train_acc": plot.converge_iteration(history, 0.98),
            "train_time_s": round(history["train_time_s"]),
            "wall_time_s": round(wall_times[label]),
            "device": "cpu", "cpu": plumbing.cpu_name(), "threads": history["threads"]}
    report_table_of(summary)


def synthetic_entry(command, **changes):
    """A run's entry of report_runs.json, with made-up numbers, `changes` replacing some."""
    entry = {"command": command, "report": "97.6%, 14 min", "epochs": 20, "params": 109_184,
             "final_test_acc": 0.9849, "best_test_acc": 0.9861, "final_test_loss": 0.06081,
             "iterations_to_90_train_acc": 150, "iterations_to_98_train_acc": 3200,
             "train_time_s": 93, "wall_time_s": 103, "device": "cpu",
             "cpu": "AMD EPYC (family 25, model 17), AVX512", "threads": 2}
    return dict(entry, **changes)


def test_report_table_renders_every_column_and_names_runs_only_where_machines_differ():
    summary = {"provenance": {"torch": "2.14.1"}, "runs": {
        "mlp": synthetic_entry("python mlp.py"),
        "cnn": synthetic_entry("python cnn.py", iterations_to_98_train_acc=None,
                               wall_time_s=None)}}
    lines = reproduce.report_table(summary).splitlines()
    assert lines[0].startswith("| command | report | epochs | ours: final (best) test accuracy |")
    assert lines[2] == ("| `python mlp.py` | 97.6%, 14 min | 20 | 98.49% (98.61%) | 3,200 "
                        "| 1 min 33 s (1 min 43 s) |")
    assert lines[3].endswith("| never | 1 min 33 s |")   # never reached 98%; no wall time kept
    assert lines[-1] == ("Trained on AMD EPYC (family 25, model 17), AVX512 with 2 threads; "
                         "torch 2.14.1.")
    summary["runs"]["cnn"].update(cpu=None, threads=1)   # a run saved before `cpu` was recorded
    assert reproduce.report_table(summary).splitlines()[-1] == (
        "Trained on AMD EPYC (family 25, model 17), AVX512 with 2 threads (mlp); "
        "a CPU not recorded with 1 thread (cnn); torch 2.14.1.")


def test_the_first_look_is_two_one_epoch_runs_of_its_own_and_a_table(tmp_path):
    full = reproduce.parse_args(["--out", str(tmp_path)])
    first_look = reproduce.planned_runs(full)[len(reproduce.RUNS):]
    assert [run.shown for run in first_look] == ["python mlp.py --epochs 1",
                                                 "python mlp.py --bn --epochs 1"]
    assert [run.out for run in first_look] == [tmp_path / "first_look" / "mlp",
                                               tmp_path / "first_look" / "mlp_bn"]
    assert len(reproduce.planned_runs(reproduce.parse_args(["--epochs", "1"]))) == 5
    summary = {"provenance": {"torch": "2.14.1"}, "first_look": {
        "mlp": synthetic_entry("python mlp.py --epochs 1", final_test_acc=0.9533, train_time_s=21),
        "mlp_bn": synthetic_entry("python mlp.py --bn --epochs 1", final_test_acc=0.9657)}}
    lines = reproduce.first_look_table(summary).splitlines()
    assert lines[2:4] == ["| `python mlp.py --epochs 1` | 95.33% | 21 s |",
                          "| `python mlp.py --bn --epochs 1` | 96.57% | 1 min 33 s |"]
    assert lines[-1].startswith("Trained on AMD EPYC")


def test_the_full_runs_name_the_record_and_a_quick_check_its_own_folder(tmp_path):
    full = reproduce.parse_args(["--out", str(tmp_path), "--jobs", "3"])
    assert (full.figures, full.results) == (Path("figures"), Path("results"))
    command = reproduce.experiments_command(full)
    assert command[:3] == ["python", "experiments.py", "all"] and "--quick" not in command
    for flag, value in (("--out", "results"), ("--figures", "figures"), ("--jobs", "3")):
        assert command[command.index(flag) + 1] == value
    # without --jobs, experiments.py's own default (the cores on a CPU, 1 on a GPU) decides
    assert "--jobs" not in reproduce.experiments_command(reproduce.parse_args([]))

    quick = reproduce.parse_args(["--out", str(tmp_path), "--epochs", "2"])
    assert quick.figures == tmp_path / "epochs_2" / "figures"
    assert quick.results == tmp_path / "epochs_2"
    command = reproduce.experiments_command(quick)
    assert "--quick" in command and "--jobs" not in command
    assert command[command.index("--out") + 1] == str(tmp_path / "epochs_2" / "experiments")
    assert command[command.index("--figures") + 1] == str(quick.figures)


def test_an_interrupted_run_is_resumed_and_another_config_is_left_alone(
        tiny_mnist, tmp_path, monkeypatch, capsys, train, in_process_plot_recorded):
    runs = [reproduce.Run(name, flags,
                          reproduce.parse_args(["--out", str(tmp_path), "--epochs", "2"]))
            for name, flags in reproduce.RUNS]
    # mlp: stopped after the first of its two epochs, as by a Ctrl-C there
    save = plumbing.save_files

    def save_then_stop(files):
        save(files)
        raise KeyboardInterrupt

    monkeypatch.setattr(plumbing, "save_files", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train("mlp", tiny_mnist, runs[0].out, "--epochs", "2", "--disp-freq", "50")
    monkeypatch.setattr(plumbing, "save_files", save)
    assert runs[0].state() == "resume"
    # mlp_bn: a run with another learning rate
    train("mlp", tiny_mnist, runs[1].out, "--bn", "--epochs", "2", "--lr", "0.05",
          "--disp-freq", "50")
    other_before = (runs[1].out / "history.json").read_text()
    assert runs[1].state() == "other"
    capsys.readouterr()

    with pytest.raises(plumbing.SolverError) as stop:
        reproduce_here(reproduce_cmd(tiny_mnist, tmp_path, "--epochs", "2")[2:])
    out, err = capsys.readouterr()
    err = str(stop.value)
    assert f"python mlp.py --epochs 2 --data-dir {tiny_mnist}" in out and "--resume" in out
    assert "holds a run with another config" in out
    assert str(runs[1].out) in err and "Traceback" not in err
    assert (runs[1].out / "history.json").read_text() == other_before   # not overwritten
    resumed = json.loads((runs[0].out / "history.json").read_text())
    assert resumed["test"]["epoch"] == [1, 2]
    plotted = in_process_plot_recorded[0]   # the finished runs only, the other one left out
    assert str(runs[0].out) in plotted and str(runs[1].out) not in plotted
    # four runs finished: no report_runs.json, which would lack one
    assert "report_runs.json not written: 4 of 5 runs finished" in out
    assert not (tmp_path / "epochs_2" / "report_runs.json").exists()


def test_ctrl_c_stops_the_run_in_flight_and_says_how_to_continue(tiny_mnist, tmp_path, repo):
    process = subprocess.Popen(reproduce_cmd(tiny_mnist, tmp_path, "--epochs", "100000"), cwd=repo,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = tmp_path / "epochs_100000" / "mlp" / "history.json"
    deadline = time.monotonic() + 120
    while not history.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("reproduce.py's first run saved no epoch within 120 s")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and err.rstrip().endswith("--epochs 100000")
    assert "reproduce.py" in err
    assert json.loads(history.read_text())["test"]["epoch"][0] == 1   # the finished epochs are kept


def test_time_left_comes_from_measured_epochs(tmp_path):
    args = reproduce.parse_args(["--out", str(tmp_path), "--epochs", "4"])
    runs = [reproduce.Run(name, flags, args) for name, flags in reproduce.RUNS]
    assert reproduce.time_left(runs) == (0.0, ["mlp", "cnn", "resnet"])   # nothing timed yet
    for run in runs[:2]:   # mlp and mlp --bn: one epoch each, of 2 s
        run.out.mkdir(parents=True)
        history = {"config": run.config, "test": {"epoch": [1]}, "epoch_time_s": [2.0]}
        (run.out / "history.json").write_text(json.dumps(history))
        (run.out / "checkpoint.pt").write_bytes(b"")
    seconds, untimed = reproduce.time_left(runs)
    assert seconds == pytest.approx(2 * 3 * 2.0) and untimed == ["cnn", "resnet"]   # 3 epochs left each
