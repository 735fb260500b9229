"""studies/runner.py: the same numbers for any --jobs, an interrupted study continued by the same
command with the numbers of an uninterrupted one (never on another kind of machine), Ctrl-C
stopping the workers at once, the progress line, the rounding of a study's JSON."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import experiments
from studies import lr, runner

DEADLINE_S = 60   # a subprocess that has not answered by then has hung: the test fails


def quick_lr(data_dir, out, *flags):
    """`experiments.py lr --quick` in this process; returns its JSON without the provenance."""
    args = experiments.parse_args(["lr", "--quick", "--data-dir", str(data_dir), "--out", str(out),
                                   "--device", "cpu", *flags])
    experiments.run_studies(args)
    record = json.loads((out / "lr.json").read_text())
    return {key: value for key, value in record.items() if key != "provenance"}, record


def interrupt_after(monkeypatch, finished):
    """lr.train_one that raises KeyboardInterrupt (Ctrl-C) once `finished` trainings are done."""
    real, calls = lr.train_one, []

    def train_one(study, job):
        if len(calls) == finished:
            raise KeyboardInterrupt
        calls.append(job)
        return real(study, job)
    monkeypatch.setattr(lr, "train_one", train_one)


def test_the_numbers_do_not_depend_on_jobs(tiny_mnist, tmp_path):
    one, record_one = quick_lr(tiny_mnist, tmp_path / "one", "--jobs", "1")
    two, record_two = quick_lr(tiny_mnist, tmp_path / "two", "--jobs", "2")
    assert one == two
    assert (record_one["provenance"]["jobs"], record_two["provenance"]["jobs"]) == (1, 2)


def test_an_interrupted_study_continues_with_the_numbers_of_an_uninterrupted_one(
        tiny_mnist, tmp_path, monkeypatch, capsys):
    whole, _ = quick_lr(tiny_mnist, tmp_path / "whole")
    interrupt_after(monkeypatch, finished=3)
    with pytest.raises(KeyboardInterrupt):
        quick_lr(tiny_mnist, tmp_path / "cut")
    saved = sorted((tmp_path / "cut" / "lr.partial").glob("[0-9]*.json"))
    assert len(saved) == 3 and not (tmp_path / "cut" / "lr.json").exists()
    made_with = json.loads((tmp_path / "cut" / "lr.partial" / "run.json").read_text())
    assert made_with["wall_s"] > 0   # the first sitting's time counts in the study's
    monkeypatch.undo()
    capsys.readouterr()
    continued, _ = quick_lr(tiny_mnist, tmp_path / "cut")
    assert continued == whole
    assert "3 of 6 trainings reused" in capsys.readouterr().out
    assert not (tmp_path / "cut" / "lr.partial").exists()   # the study is whole: nothing kept


@pytest.mark.parametrize("field, other", [("cpu", "another CPU, AVX2"), ("threads", 7),
                                           ("code", "0123456789abcdef")])
def test_trainings_saved_on_another_kind_of_machine_are_not_reused(
        tiny_mnist, tmp_path, monkeypatch, capsys, field, other):
    whole, _ = quick_lr(tiny_mnist, tmp_path / "whole")
    interrupt_after(monkeypatch, finished=2)
    with pytest.raises(KeyboardInterrupt):
        quick_lr(tiny_mnist, tmp_path / "cut")
    monkeypatch.undo()
    made_with = tmp_path / "cut" / "lr.partial" / "run.json"
    made_with.write_text(json.dumps({**json.loads(made_with.read_text()), field: other}))
    capsys.readouterr()
    again, _ = quick_lr(tiny_mnist, tmp_path / "cut")
    out = capsys.readouterr().out
    assert f"starting over; the trainings saved in {tmp_path / 'cut' / 'lr.partial'} were made " \
           f"with another {field}" in out and "reused" not in out
    assert again == whole


def test_a_progress_line_per_training_with_done_total_and_the_time_left(tiny_mnist, tmp_path,
                                                                         capsys):
    quick_lr(tiny_mnist, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lr ")]
    assert len(lines) == 6
    assert "no_bn, lr 0.1, seed 0" in lines[0] and " 1/6 " in lines[0] and "left" in lines[0]
    assert " 6/6 " in lines[-1] and lines[-1].endswith("about 0 s left")


def test_ctrl_c_stops_the_workers_at_once_and_says_how_to_continue(tiny_mnist, tmp_path, repo):
    """Ctrl-C reaches the whole foreground process group: the workers ignore it and the parent
    stops them; nothing of the group is left, exit status 130, the finished trainings kept."""
    command = [sys.executable, "experiments.py", "lr", "--quick", "--seeds", "40", "--jobs", "2",
               "--data-dir", str(tiny_mnist), "--out", str(tmp_path), "--device", "cpu"]
    child = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    start = time.monotonic()
    first = child.stdout.readline()   # the first training finished: the workers are running
    assert first.startswith("lr "), first + child.stderr.read()
    os.killpg(child.pid, signal.SIGINT)
    _, stderr = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == 130, stderr
    assert "same command continues" in stderr and "Traceback" not in stderr
    assert list((tmp_path / "lr.partial").glob("[0-9]*.json"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:   # the group empties once the workers are gone
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a worker outlived Ctrl-C")
    assert time.monotonic() - start < DEADLINE_S


def test_a_study_json_keeps_five_significant_digits():
    assert runner.rounded({"a": [0.123456789, 12345.678], "b": (1, True, None, "x"),
                           "c": float("inf")}) == {"a": [0.12346, 12346.0],
                                                   "b": [1, True, None, "x"], "c": float("inf")}
