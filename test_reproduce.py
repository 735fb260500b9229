"""reproduce.py on the tiny IDX data: the five runs and plot.py end to end, skipping what is
done, resuming what was interrupted, refusing to overwrite a run with another config."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

    # a second call skips every finished run and trains nothing again
    commands = []   # the second call's commands, recorded: plot.py was drawn above already
    monkeypatch.setattr(reproduce, "run_one", lambda command, stop_message: commands.append(command))
    reproduce_here(argv)
    out = capsys.readouterr().out
    assert out.count("already finished") == 5 and "another config" not in out
    assert [command[1] for command in commands] == ["plot.py"]   # nothing trained again


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
