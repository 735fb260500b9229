"""What keeps a run safe and its failures plain. None of it is the lesson: solver.py is.

    value checks     argparse types (positive_int, ...), pick_device, check_batch_size
    data files       read_mnist: torchvision's MNIST, a truncated file or a failed download named
    training         stop_if_diverged; keep_freed_memory_for_reuse, the malloc tuning
    the output folder  claimed_out_dir: create --out, prove it writable, lock it for this run alone
    saving           save_files: all temporaries first, then the renames, signals held back;
                     load_checkpoint: a missing, unreadable or mismatched checkpoint named
    failures         one_line_failures: SolverError, Ctrl-C, SIGTERM and a closed pipe become
                     one line on stderr and an exit code (1, 130, 143, 1), never a traceback
"""
import argparse
import contextlib
import ctypes
import io
import json
import math
import os
import platform
import shlex
import signal
import struct
import sys
import threading
from pathlib import Path

import torch

try:
    import fcntl   # POSIX; elsewhere runs are not locked
except ImportError:
    fcntl = None


class SolverError(Exception):
    """A problem the user can fix: printed as one line `error: ...`, exit status 1."""


class Diverged(SolverError):
    """The training loss became inf or nan (experiments.py's lr study marks it, a run stops)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `kill`, a batch system's limit), stopped the same clean way as Ctrl-C."""


# ----------------------------------------------------------------------------- value checks

def _checked(convert, accept, expected):
    """An argparse type: convert the text and accept it, or say what was expected (exit 2)."""
    def check(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):   # `not accept` also rejects nan
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value
    return check


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
non_negative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
momentum_value = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")


def one_of(*names):
    return _checked(str, lambda v: v in names, "one of " + ", ".join(names))


DEVICES = ("auto", "cpu", "cuda", "mps")   # the choices of every script's --device


def cpu_name():
    """The CPU as the OS names it, with family and model numbers where /proc/cpuinfo has them,
    and the instruction set torch's kernels use (the last digits of a run depend on both)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def pick_device(requested):
    """torch.device for --device auto|cpu|cuda|mps; auto takes a GPU where there is one."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if requested == "auto":
        return torch.device("cuda" if available["cuda"] else "mps" if available["mps"] else "cpu")
    if not available[requested]:
        raise SolverError(f"--device {requested} was asked for, but this machine has no "
                          f"{requested.upper()} device; use --device cpu or --device auto")
    return torch.device(requested)


def check_batch_size(batch_size, n_images):
    if batch_size > n_images:
        raise SolverError(f"--batch-size {batch_size} is larger than the training set "
                          f"({n_images} images)")


# ----------------------------------------------------------------------------- data files

def check_idx_file(path, expected_ndim):
    """Check an IDX file's header against its size, so a truncated file is named, not mis-read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] != expected_ndim:
            raise SolverError(f"{path} is corrupted: it does not start with an IDX header for "
                              f"{expected_ndim}-D unsigned bytes; delete it and get it again")
        size_fields = f.read(4 * expected_ndim).ljust(4 * expected_ndim, b"\0")
        dims = struct.unpack(f">{expected_ndim}I", size_fields)
    expected_size = 4 + 4 * expected_ndim + math.prod(dims)
    if size != expected_size:
        raise SolverError(f"{path} is truncated or corrupted: its header declares "
                          f"{expected_size:,} bytes, the file has {size:,}; "
                          "delete it and get it again")


MNIST_FILES = {"train-images-idx3-ubyte": 3, "train-labels-idx1-ubyte": 1,   # name: dimensions
               "t10k-images-idx3-ubyte": 3, "t10k-labels-idx1-ubyte": 1}


def read_mnist(data_dir):
    """torchvision's two MNIST splits from data_dir (downloaded if absent), or one clear error."""
    # Imported here, not at the top: torchvision takes a second to import, and only reading
    # MNIST needs it, so `--help` and a mistyped flag answer at once.
    import torchvision
    raw = Path(data_dir) / "MNIST" / "raw"
    for filename, ndim in MNIST_FILES.items():
        if (raw / filename).exists():
            check_idx_file(raw / filename, ndim)
    try:
        # torchvision prints each download attempt; we print one line of our own if all fail.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train_set = torchvision.datasets.MNIST(data_dir, train=True, download=True)
            test_set = torchvision.datasets.MNIST(data_dir, train=False, download=True)
    except Exception as error:   # no network, a read-only folder, a proxy: all end the same way
        raise SolverError(
            f"MNIST is not in {raw} and could not be downloaded ({type(error).__name__}). "
            f"Put the four files {', '.join(MNIST_FILES)} in {raw}, or point --data-dir at "
            "a folder holding MNIST/raw/") from None
    for split, dataset in (("training", train_set), ("test", test_set)):
        images, labels = dataset.data, dataset.targets
        shape_ok = len(images) == len(labels) and images.shape[1:] == (28, 28)
        if not shape_ok or labels.max() > 9 or labels.min() < 0:
            raise SolverError(f"the MNIST {split} files in {raw} do not match each other "
                              f"({len(images)} images of {tuple(images.shape[1:])}, "
                              f"{len(labels)} labels)")
    return train_set, test_set


# ----------------------------------------------------------------------------- training

def stop_if_diverged(losses, last_iteration):
    """Stop with one line at the first non-finite loss of a window that ended at last_iteration."""
    finite = torch.isfinite(losses)
    if not finite.all():
        first_bad = int((~finite).nonzero()[0])              # its position in the window
        iteration = last_iteration - len(losses) + 1 + first_bad
        raise Diverged(f"training diverged at iteration {iteration} "
                          f"(loss {losses[first_bad].item()}); try a smaller --lr")


def keep_freed_memory_for_reuse():
    """Ask glibc's malloc to keep freed memory for the next tensor, not return it to the OS.

    PyTorch takes CPU tensors straight from malloc. By default glibc hands the memory of large
    tensors back to the operating system when they are freed, so the next step's tensors of the
    same size page-fault it in again, page by page, every step. With the two thresholds raised,
    freed blocks are reused and the faults stop; `python bench.py --default-malloc` shows the
    difference (docs/performance-notes.md). Does nothing without glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # a C library without mallopt (e.g. musl in some builds)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # parameter numbers from glibc's <malloc.h>
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)   # blocks up to 32 MB come from the reusable heap...
    mallopt(M_TRIM_THRESHOLD, 2**30)        # ...which is not shrunk until 1 GB of it lies free


# ----------------------------------------------------------------------------- the output folder

LOCK_NAME = ".lock"


@contextlib.contextmanager
def claimed_out_dir(out):
    """Create --out, prove it writable and hold its lock while the block runs.

    The lock is the operating system's (flock on `out/.lock`): it ends with the process however
    that ends, so a run killed outright (SIGKILL, power loss) never blocks the next one.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock_file = open(out / LOCK_NAME, "a")   # opening it for writing is the writability test
    except OSError as error:
        raise SolverError(f"cannot write to --out {out} ({error.strerror or error}); "
                          "pick a folder you can write to") from None
    with lock_file:
        if fcntl is not None:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SolverError(f"a run is writing to {out} right now (it holds "
                                  f"{out / LOCK_NAME}); "
                                  "wait for it to end or give this one another --out") from None
        yield


# ----------------------------------------------------------------------------- saving and resuming

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Signals belong to the command a user started: only inside one_line_failures (a script's or a
# study's command line) are they held back or handled. Code called in-process (the tests, a
# notebook) leaves every signal handler alone.
_handling_signals = False


@contextlib.contextmanager
def stop_signals_held_back():
    """Hold Ctrl-C (SIGINT) and SIGTERM that arrive inside the block; deliver them when it ends.
    Only in a command's process (one_line_failures); elsewhere the block just runs."""
    if not _handling_signals or threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    hold = lambda signum, frame: arrived.append(signum)
    previous = {s: signal.signal(s, hold) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)   # now the usual KeyboardInterrupt / Terminated


def json_writer(data):
    return lambda path: path.write_text(json.dumps(data, indent=1))


def torch_writer(data):
    def write(path):
        with open(path, "wb") as f:   # a Python file, so a full disk raises OSError like the others
            torch.save(data, f)
    return write


def write_temporary(tmp, write):
    """One file's content, into its temporary name (tests patch this to fail or to press Ctrl-C)."""
    write(tmp)


def save_files(files):
    """Save several files as one: every temporary is written before any file is replaced.

    `files` maps each final path to a function that writes the content to a path it is given.
    A write that fails (a full disk, an I/O error, no permission) removes the temporaries and
    raises one SolverError naming the file, and every previous file stays as it was. Signals
    wait until the renames are done, so a Ctrl-C never leaves one file an epoch ahead of another.
    """
    written = []
    with stop_signals_held_back():
        for path, write in files.items():
            tmp = path.with_name(path.name + ".tmp")
            try:
                write_temporary(tmp, write)
            except OSError as error:
                for stray in [*written, tmp]:
                    with contextlib.suppress(OSError):
                        stray.unlink()
                cause = error.strerror or error
                raise SolverError(f"could not save {path} ({cause}); the files of the last "
                                  f"finished epoch in {path.parent} are unchanged") from None
            written.append(tmp)
        for tmp, path in zip(written, files):
            os.replace(tmp, path)


def load_checkpoint(path, name, norm):
    """checkpoint.pt for --resume, if it exists, is readable and holds this script's run."""
    if not path.exists():
        raise SolverError(f"--resume: there is no checkpoint.pt in {path.parent}; run without "
                          "--resume to start, or point --out at the run to continue")
    try:
        checkpoint = torch.load(path, weights_only=True)   # data and tensors only: no code runs
    except Exception as error:
        raise SolverError(f"--resume: {path} cannot be read ({type(error).__name__}); "
                          "delete it and start again") from None
    saved_norm = checkpoint.get("norm")
    if (checkpoint.get("model"), saved_norm) != (name, norm):
        raise SolverError(f"--resume: {path} holds a {checkpoint.get('model')} run with "
                          f"--norm {saved_norm}, not {name} with --norm {norm}; "
                          "use the matching script and flag, or another --out")
    return checkpoint


# ----------------------------------------------------------------------------- failures

def what_was_kept(out, command, resumed):
    """After a stop: what --out holds, and the command that carries on from there."""
    if (out / "checkpoint.pt").exists():
        return (f"{out} keeps the last finished epoch; continue with:\n  "
                f"{command}{'' if resumed else ' --resume'}")
    return f"no epoch had finished, so nothing was saved; start again with:\n  {command}"


def command_line(script, argv=None):
    """`python script ...` as typed: with sys.argv's arguments unless argv is given."""
    return "python " + shlex.join([script, *(sys.argv[1:] if argv is None else argv)])


def run_stop_message(out, script, argv=None, resumed=False):
    """For one_line_failures: what a run's `out` kept, and the command that continues it."""
    return lambda: what_was_kept(out, command_line(script, argv), resumed)


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def one_line_failures(stop_message):
    """Map every failure a user can cause or choose to one line on stderr and an exit code.

    stop_message() says, after Ctrl-C, SIGTERM or a closed pipe, what was kept and how to go on.
    Used by the command-line entry points only: it installs a SIGTERM handler for the process.
    """
    global _handling_signals
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        _handling_signals = True
    try:
        yield
    except SolverError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except Terminated:
        print(f"\nterminated (SIGTERM): {stop_message()}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)   # 143, what a shell reports for a process ended by SIGTERM
    except KeyboardInterrupt:
        print(f"\ninterrupted: {stop_message()}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:   # whoever read the log stopped reading, as in `python cnn.py | head`
        # Point stdout at /dev/null, or Python's final flush at exit fails on the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(BrokenPipeError):   # stderr may be the same closed pipe (2>&1)
            print(f"stopped: the log's reader closed its end; {stop_message()}", file=sys.stderr)
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            _handling_signals = False
