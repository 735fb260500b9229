"""plumbing.py and every failure a student can cause on the command line: bad values, a missing
device, missing or damaged MNIST, an unwritable or busy --out, divergence, a mismatched
checkpoint, Ctrl-C, SIGTERM, a closed pipe and a save that fails. Each ends in one line and
an exit code, and keeps what was finished.

In this process the runs go through solver.train_run, which raises plumbing.SolverError and
touches no signal handler; what the command line makes of a failure (one line, an exit code,
signals) is tested in real subprocesses, one per behaviour."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error

import pytest
import torch
import torchvision

import plumbing
import solver

DEADLINE_S = 120   # a wait for a subprocess fails after this


def failure(call):
    """The message of the SolverError that call() raises: one line, as the command prints it."""
    with pytest.raises(plumbing.SolverError) as stop:
        call()
    message = str(stop.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("flags", [
    ["--epochs", "0"], ["--batch-size", "-5"], ["--disp-freq", "0"], ["--lr", "-0.1"],
    ["--weight-decay", "-1e-4"], ["--momentum", "1"], ["--momentum", "-0.1"],
    ["--epochs", "ten"], ["--lr", "fast"], ["--no-such-flag"], ["--device", "tpu"],
])
def test_invalid_values_are_usage_errors(flags, capsys, tmp_path, train, exit_code_and_stderr):
    code, err = exit_code_and_stderr(lambda: train("mlp", tmp_path, tmp_path / "out", *flags))
    assert code == 2
    assert "usage:" in err and "error:" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_asking_for_a_device_the_machine_lacks_is_one_clear_line(
        device, monkeypatch, tmp_path, train):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    err = failure(lambda: train("mlp", tmp_path, tmp_path / "out", "--device", device))
    assert f"--device {device} was asked for" in err and "--device cpu" in err
    assert not (tmp_path / "out").exists()


def test_bad_flag_from_the_command_line_has_no_traceback(repo):
    result = subprocess.run([sys.executable, "mlp.py", "--momentum", "1.5"], cwd=repo,
                            capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == 2
    assert "must be in [0, 1)" in result.stderr and "Traceback" not in result.stderr


def test_a_failure_on_the_command_line_is_one_line_and_exit_1(repo, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "mlp.py", "--out", str(blocker / "run")], cwd=repo,
                            capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write to --out")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_missing_mnist_without_network_names_folder_and_files(tmp_path, monkeypatch, train):
    def no_network(self):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    err = failure(lambda: train("mlp", tmp_path / "empty", tmp_path / "out"))
    assert str(tmp_path / "empty" / "MNIST" / "raw") in err
    for filename in plumbing.MNIST_FILES:
        assert filename in err
    assert "--data-dir" in err


@pytest.mark.parametrize("damage", ["truncate", "bad_header"])
def test_corrupted_data_file_is_named(tiny_mnist, tmp_path, damage, train):
    data = tmp_path / "data"
    raw = data / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (tiny_mnist / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    victim = raw / "t10k-images-idx3-ubyte"
    content = victim.read_bytes()
    victim.write_bytes(content[:-100] if damage == "truncate" else b"GARBAGE!" + content[8:])
    assert str(victim) in failure(lambda: train("mlp", data, tmp_path / "out"))


def test_unwritable_out_fails_before_training(tiny_mnist, tmp_path, capsys, train):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "cannot write to --out" in failure(lambda: train("mlp", tiny_mnist, blocker / "run"))
    assert "epoch" not in capsys.readouterr().out


def test_divergence_stops_with_message_and_keeps_finished_epochs(tiny_mnist, tmp_path, train):
    train("mlp", tiny_mnist, tmp_path, "--epochs", "1", "--batch-size", "30")
    before = (tmp_path / "history.json").read_text()
    err = failure(lambda: train(
        "mlp", tiny_mnist, tmp_path, "--epochs", "3", "--batch-size", "30", "--lr", "1e30", "--resume"))
    assert "training diverged at iteration" in err and "try a smaller --lr" in err
    iteration = int(err.split("iteration ")[1].split()[0])
    assert iteration > 10                     # epoch 1 (10 steps) was fine
    assert (tmp_path / "history.json").read_text() == before


@pytest.mark.parametrize("first,second,message", [
    (None, ("mlp", []), "no checkpoint.pt"),
    (("cnn", []), ("mlp", []), "holds a cnn run"),
    (("mlp", ["--bn"]), ("mlp", []), "with --norm bn, not mlp with --norm none"),
])
def test_resume_refuses_missing_or_mismatched_checkpoint(
        tiny_mnist, tmp_path, first, second, message, train):
    if first:
        train(first[0], tiny_mnist, tmp_path, "--epochs", "1", "--batch-size", "50", *first[1])
    assert message in failure(lambda: train(
        second[0], tiny_mnist, tmp_path, "--epochs", "2", "--batch-size", "50", "--resume", *second[1]))


def start_endless_runs(repo, data_dir, outs, *flags):
    """`python cnn.py` in a subprocess per folder of `outs`, started together (their imports
    run side by side), returned once each has saved its first epoch."""
    processes = [subprocess.Popen(
        [sys.executable, "cnn.py", "--data-dir", str(data_dir), "--out", str(out),
         "--epochs", "100000", "--batch-size", "10", *flags],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]
    deadline = time.monotonic() + DEADLINE_S
    while not all((out / "history.json").exists() for out in outs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                process.kill()
            pytest.fail(f"no first epoch saved by every run within {DEADLINE_S} s")
        time.sleep(0.05)
    return processes


def start_endless_run(repo, data_dir, out, *flags):
    return start_endless_runs(repo, data_dir, [out], *flags)[0]


def test_ctrl_c_or_sigterm_keeps_last_epoch_and_says_how_to_go_on(tiny_mnist, tmp_path, repo):
    stops = [(signal.SIGINT, 130, "interrupted"),   # Ctrl-C
             (signal.SIGTERM, 143, "terminated")]   # `timeout 600 python mlp.py --bn`, `kill`
    outs = [tmp_path / f"run_{code}" for _, code, _ in stops]
    processes = start_endless_runs(repo, tiny_mnist, outs)
    time.sleep(0.5)
    for process, (stop, _, _) in zip(processes, stops):
        process.send_signal(stop)
    for process, out, (_, code, word) in zip(processes, outs, stops):
        _, err = process.communicate(timeout=DEADLINE_S)
        assert process.returncode == code
        assert "Traceback" not in err and "python cnn.py --data-dir" in err
        assert err.rstrip().endswith("--resume")
        assert word in err
        history = json.loads((out / "history.json").read_text())
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
        assert checkpoint["epoch"] == len(history["test"]["epoch"]) >= 1
        assert not list(out.glob("*.tmp"))


def test_closed_log_pipe_stops_cleanly_and_keeps_finished_epochs(tiny_mnist, tmp_path, repo):
    # `python cnn.py | head`: the reader goes away; the run must stop with one line, no traceback.
    out = tmp_path / "run"
    process = start_endless_run(repo, tiny_mnist, out, "--disp-freq", "1")
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=DEADLINE_S) == 1
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "reader closed" in err and err.rstrip().endswith("--resume")
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] >= 1


def test_stop_message_says_whether_there_is_anything_to_resume(tmp_path):
    assert "nothing was saved" in plumbing.what_was_kept(tmp_path, "python mlp.py", resumed=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert plumbing.what_was_kept(tmp_path, "python mlp.py", resumed=False).endswith("python mlp.py --resume")
    assert plumbing.what_was_kept(tmp_path, "python mlp.py --resume", resumed=True).endswith(
        "python mlp.py --resume")


CTRL_C_MID_SAVE_PROGRAM = textwrap.dedent("""
    import os, signal, sys, mlp, plumbing, solver
    write_file = plumbing.write_temporary
    def write_then_press_ctrl_c(path, write):   # Ctrl-C right after history.json is written
        write_file(path, write)
        if path.name == "history.json.tmp":
            os.kill(os.getpid(), signal.SIGINT)
    plumbing.write_temporary = write_then_press_ctrl_c
    solver.run("mlp", mlp.build_model, mlp.config, sys.argv[1:])
""")


def test_ctrl_c_between_the_two_files_still_saves_both(tiny_mnist, tmp_path, repo):
    # Ctrl-C pressed right after history.json is written, before checkpoint.pt: the checkpoint
    # must still be written, so both files describe the same epoch and --resume stays exact.
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_MID_SAVE_PROGRAM, "--data-dir", str(tiny_mnist),
         "--out", str(tmp_path), "--epochs", "3", "--batch-size", "50", "--device", "cpu"],
        cwd=repo, capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode == 130 and "interrupted" in result.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == history["test"]["epoch"][-1] == 1


MALLINFO_PROGRAM = textwrap.dedent("""
    import ctypes, json, torch, plumbing
    class MallInfo2(ctypes.Structure):   # glibc's struct mallinfo2, <malloc.h>
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2

    def one_tensor():
        before = mallinfo2()
        tensor = torch.empty(4 * 2**20)   # 16 MB, the size class of a conv net's activations
        held = mallinfo2()
        del tensor
        freed = mallinfo2()
        return {"mmapped": held.hblkhd - before.hblkhd, "mmap_returned": held.hblkhd - freed.hblkhd,
                "heap_free_after": freed.fordblks}

    default = one_tensor()   # first with glibc's defaults: the control
    plumbing.keep_freed_memory_for_reuse()
    print(json.dumps({"default": default, "keep": one_tensor()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux only)")
def test_freed_tensor_memory_stays_in_the_heap_for_reuse(repo):
    # In a fresh process, so malloc starts clean. glibc's default gives a large tensor its own
    # mmap and hands it back to the OS when freed, so the next step's tensor faults its pages in
    # again (docs/performance-notes.md counts the faults; their number varies from run to run,
    # so the test checks the mechanism, which does not).
    result = subprocess.run([sys.executable, "-c", MALLINFO_PROGRAM], capture_output=True, text=True,
                            cwd=repo, check=True, timeout=DEADLINE_S)
    memory = json.loads(result.stdout)
    default, keep = memory["default"], memory["keep"]
    # the control: without the call the tensor is mmapped and given back
    assert default["mmapped"] >= 16 * 2**20 and default["mmap_returned"] == default["mmapped"]
    # after it: taken from the heap, and after the free its 16 MB lie there for the next tensor
    assert keep["mmapped"] == 0 and keep["heap_free_after"] >= 16 * 2**20


def folder_snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_second_run_into_a_busy_folder_stops_at_once_and_touches_nothing(
        tiny_mnist, tmp_path, train):
    train("mlp", tiny_mnist, tmp_path, "--epochs", "1", "--batch-size", "50")
    with plumbing.claimed_out_dir(tmp_path):   # as a run in another terminal holds it
        before = folder_snapshot(tmp_path)
        err = failure(lambda: train("mlp", tiny_mnist, tmp_path, "--epochs", "2",
                                    "--batch-size", "50", "--resume"))
        assert folder_snapshot(tmp_path) == before
    assert f"a run is writing to {tmp_path}" in err
    train("mlp", tiny_mnist, tmp_path, "--epochs", "2", "--batch-size", "50", "--resume")   # free again


def test_a_run_killed_outright_leaves_no_lock_behind(tiny_mnist, tmp_path, train, repo):
    out = tmp_path / "run"
    process = start_endless_run(repo, tiny_mnist, out)
    process.kill()   # SIGKILL: no handler runs, nothing is cleaned up
    process.communicate(timeout=DEADLINE_S)
    epoch = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    train("cnn", tiny_mnist, out, "--batch-size", "10", "--epochs", str(epoch + 1), "--resume")
    assert json.loads((out / "history.json").read_text())["test"]["epoch"][-1] == epoch + 1


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EACCES])
@pytest.mark.parametrize("failing", ["history.json", "activation.json", "checkpoint.pt"])
def test_a_failed_save_names_the_file_and_keeps_the_last_epoch(
        tiny_mnist, tmp_path, monkeypatch, error, failing, train):
    train("mlp", tiny_mnist, tmp_path, "--epochs", "1", "--batch-size", "50")
    before = folder_snapshot(tmp_path)
    write_file = plumbing.write_temporary

    def fail_on(path, write):
        if path.name == failing + ".tmp":
            write(path)   # half a file is on the disk when the disk fills
            raise OSError(error, os.strerror(error))
        write_file(path, write)

    monkeypatch.setattr(plumbing, "write_temporary", fail_on)
    err = failure(lambda: train("mlp", tiny_mnist, tmp_path, "--epochs", "2",
                                "--batch-size", "50", "--resume"))
    assert str(tmp_path / failing) in err and os.strerror(error) in err
    assert folder_snapshot(tmp_path) == before   # the first epoch's three files, and no stray .tmp


def test_a_full_disk_during_torch_save_is_an_os_error():
    # torch.save into a Python file object reports a full disk as OSError, which save_files
    # turns into one line; given a path, it would raise an opaque RuntimeError instead.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OSError) as failure:
        plumbing.torch_writer({"weights": torch.zeros(10_000)})(plumbing.Path("/dev/full"))
    assert failure.value.errno == errno.ENOSPC
