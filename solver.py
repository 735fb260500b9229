"""The training loop the three model scripts share: command line, MNIST, SGD, logging, saving.

A model script (mlp.py, cnn.py, resnet.py) holds its network and a `config` dict and calls
`run(...)`; everything else lives here, read top to bottom:

    parse_args      the command line, with the script's config as defaults
    load_mnist      the four MNIST files -> four tensors, loaded once, normalised once
    train_one_epoch one pass over a fresh permutation, batches taken by indexing
    evaluate        test loss and accuracy over the 10k test set
    run             the epochs, history.json, activation.json and checkpoint.pt after each one, --resume

config keys (the report's values in mlp.py / cnn.py; resnet.py sets its own):
    learning_rate  SGD step size (the report: 0.1)
    weight_decay   L2 penalty added by SGD (1e-4)
    momentum       SGD momentum (0.9)
    batch_size     images per step (100)
    max_epoch      passes over the 60,000 training images (100)
    disp_freq      iterations per log line and per point of the training curves (50)
    lr_schedule    "constant" (the report) or "cosine": each epoch e of E uses
                   learning_rate * (1 + cos(pi * e / E)) / 2, decaying smoothly towards 0
    warmup_epochs  with "cosine": epochs of linearly rising rate before the decay (0: none)
    augment_shift  shift each training image by up to this many pixels each time it is
                   seen (0: the report's plain data)

--plain gives the report's exact recipe: constant rate, no warm-up, no shifts.
"""
import argparse
import contextlib
import ctypes
import io
import json
import math
import os
import shlex
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # of the 60,000 training images, pixels scaled to [0, 1]
MNIST_FILES = {  # file under MNIST/raw/ -> number of dimensions its IDX header declares
    "train-images-idx3-ubyte": 3, "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3, "t10k-labels-idx1-ubyte": 1,
}
# Evaluation batches: 100, not 1,000, because on a CPU the conv nets' activations for 1,000
# images outgrow the cache; bench.py measured the 10k test images here in 0.14-0.23 s (cnn.py)
# and 1.4-1.8 s (resnet.py) in batches of 100, against 0.35-0.37 s and 3.9-4.9 s in batches of 1,000.
EVAL_BATCH_SIZE = 100
PROBE_UNIT = 0   # the hidden unit whose input distribution activation.json tracks (BN paper, Fig. 1)
MODEL_SCRIPTS = ("mlp", "cnn", "resnet")   # the scripts that train with this solver


class SolverError(Exception):
    """A problem the user can fix; `run` prints its one-line message and exits with status 1."""


# ----------------------------------------------------------------------------- command line

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:   # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _momentum(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# argparse names the expected type in its error message by the function's __name__.
positive_int.__name__ = "positive integer"
_non_negative_int.__name__ = "non-negative integer"
_non_negative_float.__name__ = "non-negative number"
_momentum.__name__ = "momentum in [0, 1)"


def parse_args(name, config, bn_default, argv=None):
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=f"Train the {name} on MNIST with SGD (see {name}.py).")
    add = parser.add_argument
    add("--bn", action=argparse.BooleanOptionalAction, default=bn_default,
        help="use batchnorm.py's Batch Normalization layers (default: %(default)s)")
    add("--epochs", type=positive_int, default=config["max_epoch"], help="(default: %(default)s)")
    add("--batch-size", type=positive_int, default=config["batch_size"], help="(default: %(default)s)")
    add("--lr", type=_non_negative_float, default=config["learning_rate"],
        help="learning rate, the peak of the cosine schedule (default: %(default)s)")
    add("--lr-schedule", choices=["constant", "cosine"], default=config["lr_schedule"],
        help="(default: %(default)s)")
    add("--warmup-epochs", type=_non_negative_int, default=config["warmup_epochs"],
        help="epochs of rising learning rate before the cosine (default: %(default)s)")
    add("--augment-shift", type=_non_negative_int, default=config["augment_shift"],
        help="random shift of training images, in pixels (default: %(default)s)")
    add("--plain", action="store_true",
        help="the report's plain config: --lr-schedule constant --warmup-epochs 0 --augment-shift 0")
    add("--weight-decay", type=_non_negative_float, default=config["weight_decay"], help="(default: %(default)s)")
    add("--momentum", type=_momentum, default=config["momentum"], help="(default: %(default)s)")
    add("--disp-freq", type=positive_int, default=config["disp_freq"],
        help="iterations per log line (default: %(default)s)")
    add("--seed", type=int, default=0, help="(default: %(default)s)")
    add("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="(default: %(default)s)")
    add("--data-dir", default="data",
        help="folder holding (or receiving) MNIST/raw/; offline here: ../shared/data (default: %(default)s)")
    add("--out", default=None,
        help=f"where history.json, activation.json and checkpoint.pt go "
             f"(default: runs/{name}, or runs/{name}_bn with --bn)")
    add("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    args = parser.parse_args(argv)
    if args.plain:
        args.lr_schedule, args.warmup_epochs, args.augment_shift = "constant", 0, 0
    if args.out is None:
        args.out = f"runs/{name}_bn" if args.bn else f"runs/{name}"
    return args


def effective_config(config, args):
    """The script's config with the command line's overrides: what this run really uses."""
    return dict(config, learning_rate=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                batch_size=args.batch_size, max_epoch=args.epochs, disp_freq=args.disp_freq,
                lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs,
                augment_shift=args.augment_shift, seed=args.seed)


def pick_device(requested):
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[requested]:
        raise SolverError(f"--device {requested} was asked for, but this machine has no {requested.upper()} "
                          "device; use --device cpu or --device auto")
    return torch.device(requested)


def keep_freed_memory_for_reuse():
    """Ask glibc's malloc to keep freed memory for the next tensor instead of returning it to the OS.

    PyTorch takes CPU tensors straight from malloc. By default glibc hands the memory of large
    tensors back to the operating system when they are freed, so the next step's tensors of the
    same size page-fault it in again, page by page (the CNN's first BN layer alone: ~240 faults
    per step). With the two thresholds raised, freed blocks are reused and the faults stop;
    `python bench.py --default-malloc` shows the difference: here the bare CNN+BN and
    mini-ResNet steps ran 9-26% faster with it. The MLP's tensors are too small to be
    affected. Does nothing where malloc is not glibc's.
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


# ----------------------------------------------------------------------------- data

def check_idx_file(path, expected_ndim):
    """Check an IDX file's header against its size, so a truncated file is named, not mis-read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] != expected_ndim:
            raise SolverError(f"{path} is corrupted: it does not start with an IDX header for "
                              f"{expected_ndim}-D unsigned bytes; delete it and get it again")
        dims = struct.unpack(f">{expected_ndim}I", f.read(4 * expected_ndim).ljust(4 * expected_ndim, b"\0"))
    expected_size = 4 + 4 * expected_ndim + math.prod(dims)
    if size != expected_size:
        raise SolverError(f"{path} is truncated or corrupted: its header declares {expected_size:,} bytes, "
                          f"the file has {size:,}; delete it and get it again")


def load_mnist(data_dir, device):
    """MNIST as four tensors on `device`: images (N, 1, 28, 28) normalised, labels (N,) int64.

    torchvision reads the raw files (downloading them first if absent); the scaling to [0, 1]
    and the normalisation happen once here, for all 70,000 images, not per sample per epoch.
    """
    raw = Path(data_dir) / "MNIST" / "raw"
    for filename, ndim in MNIST_FILES.items():
        if (raw / filename).exists():
            check_idx_file(raw / filename, ndim)
    try:
        # torchvision prints each download attempt; we print one line of our own if all fail.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train = torchvision.datasets.MNIST(data_dir, train=True, download=True)
            test = torchvision.datasets.MNIST(data_dir, train=False, download=True)
    except Exception as error:   # no network, a read-only folder, a proxy: all end the same way
        raise SolverError(
            f"MNIST is not in {raw} and could not be downloaded ({type(error).__name__}). "
            f"Put the four files {', '.join(MNIST_FILES)} in {raw}, or point --data-dir at a folder "
            "that holds MNIST/raw/ (offline here: --data-dir ../shared/data)") from None

    def prepare(dataset, split):
        images = dataset.data.to(device=device, dtype=torch.float32).div_(255).unsqueeze(1)
        images.sub_(MNIST_MEAN).div_(MNIST_STD)
        labels = dataset.targets.to(device=device, dtype=torch.int64)
        if len(images) != len(labels) or images.shape[2:] != (28, 28) or labels.max() > 9 or labels.min() < 0:
            raise SolverError(f"the MNIST {split} files in {raw} do not match each other "
                              f"({len(images)} images of {tuple(images.shape[2:])}, {len(labels)} labels)")
        return images, labels

    return (*prepare(train, "training"), *prepare(test, "test"))


# ----------------------------------------------------------------------------- training

def make_optimizer(model, config):
    """SGD with the config's learning rate, momentum and weight decay (bench.py times the same)."""
    # foreach: one call updates every parameter (the same numbers as the per-tensor loop, fewer calls)
    return torch.optim.SGD(model.parameters(), lr=config["learning_rate"], momentum=config["momentum"],
                           weight_decay=config["weight_decay"], foreach=True)


def learning_rate(config, epoch):
    """The learning rate of epoch `epoch` (0-based), set once per epoch."""
    peak = config["learning_rate"]
    if config["lr_schedule"] == "constant":
        return peak
    warmup = config["warmup_epochs"]
    if epoch < warmup:   # ramp up: a full-size first step can kill ReLUs of a net without BN
        return peak * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, config["max_epoch"] - warmup)
    return peak * (1 + math.cos(math.pi * progress)) / 2


def random_shift(images, max_shift, generator):
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift] pixels.

    The uncovered border gets the background value (a black pixel after normalisation).
    Padding by max_shift and unfolding gives every shifted 28x28 window of every image as a
    view, with no copy: windows[k, dy, dx] is image k shifted by (dy - s, dx - s). One indexed
    copy then picks a window per image, for the whole batch, with no per-sample Python.
    """
    n, _, height, width = images.shape
    padded = F.pad(images[:, 0], (max_shift,) * 4, value=-MNIST_MEAN / MNIST_STD)   # (N, H+2s, W+2s)
    windows = padded.unfold(1, height, 1).unfold(2, width, 1)                       # (N, 2s+1, 2s+1, H, W)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    return windows[torch.arange(n, device=images.device), dy, dx].unsqueeze(1)


class InputProbe:
    """Records how the input of the model's first ReLU moves during training (BN paper, Fig. 1).

    A forward hook only keeps a reference to the latest input (no work per iteration); once per
    disp_freq window `record_window` appends the 15th, 50th and 85th percentiles of one unit
    (channel) of it to `self.record`, which run() saves as activation.json beside history.json.
    """

    def __init__(self, model, unit=PROBE_UNIT):
        self.latest = None
        self.record = {"layer": "input of the first ReLU", "unit": unit, "iter": [], "p15": [], "p50": [], "p85": []}
        first_relu = next((m for m in model.modules() if isinstance(m, nn.ReLU)), None)
        self.found = first_relu is not None
        if self.found:
            first_relu.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.latest = inputs[0]

    def record_window(self, iteration):
        values = self.latest.detach()[:, self.record["unit"]].flatten().float()
        quantiles = torch.tensor([0.15, 0.50, 0.85], device=values.device)
        for key, value in zip(("p15", "p50", "p85"), torch.quantile(values, quantiles).tolist()):
            self.record[key].append(value)
        self.record["iter"].append(iteration)


def train_one_epoch(model, optimizer, train_x, train_y, config, history, shuffle_gen, probe, log):
    """One pass over the training set in a fresh random order; appends to history["train"]."""
    model.train()
    batch_size, disp_freq = config["batch_size"], config["disp_freq"]
    steps = len(train_x) // batch_size   # drop the incomplete last batch, as DataLoader(drop_last=True)
    order = torch.randperm(len(train_x), generator=shuffle_gen).to(train_x.device)
    iteration = history["train"]["iter"][-1] if history["train"]["iter"] else 0
    window_loss, window_logits, window_labels = [], [], []

    for step in range(steps):
        batch = order[step * batch_size:(step + 1) * batch_size]
        images, labels = train_x.index_select(0, batch), train_y.index_select(0, batch)
        if config["augment_shift"]:
            images = random_shift(images, config["augment_shift"], shuffle_gen)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Keep the numbers as tensors: reading them (.item()) each step would stall a GPU, and
        # the accuracy is counted once per window, over all of its steps' logits at once.
        window_loss.append(loss.detach())
        window_logits.append(logits.detach())
        window_labels.append(labels)
        iteration += 1

        if iteration % disp_freq == 0 or step == steps - 1:   # one log line per window
            losses = torch.stack(window_loss)
            finite = torch.isfinite(losses)
            if not finite.all():
                first_bad = int((~finite).nonzero()[0])
                raise SolverError(f"training diverged at iteration {iteration - len(losses) + first_bad + 1} "
                               f"(loss {losses[first_bad].item()}); try a smaller --lr")
            mean_loss = losses.mean().item()
            predictions = torch.cat(window_logits).argmax(dim=1)
            accuracy = (predictions == torch.cat(window_labels)).sum().item() / len(predictions)
            history["train"]["iter"].append(iteration)
            history["train"]["loss"].append(mean_loss)
            history["train"]["acc"].append(accuracy)
            if probe.found:
                probe.record_window(iteration)
            log(f"iter {iteration:6d}  train loss {mean_loss:.4f}  acc {accuracy:.4f}")
            window_loss, window_logits, window_labels = [], [], []


@torch.inference_mode()
def evaluate(model, images, labels, batch_size=EVAL_BATCH_SIZE):
    """Mean cross-entropy per sample and accuracy (a fraction) over a whole split, in eval mode."""
    model.eval()
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        target = labels[start:start + batch_size]
        total_loss += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    return total_loss.item() / len(images), correct.item() / len(images)


# ----------------------------------------------------------------------------- saving

def save_atomically(path, write):
    """Write to a temporary file beside `path`, then rename: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def ctrl_c_held_back():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and deliver it when the block ends."""
    if threading.current_thread() is not threading.main_thread():   # only the main thread gets signals
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            signal.raise_signal(signal.SIGINT)   # now the usual KeyboardInterrupt


def save_run(out, history, activation, checkpoint):
    """Write history.json, activation.json and checkpoint.pt for the same epoch.

    Ctrl-C is held back while the three are written: pressed between two files it would leave
    a history one epoch ahead of the checkpoint that --resume continues from.
    """
    with ctrl_c_held_back():
        save_atomically(out / "history.json", lambda p: p.write_text(json.dumps(history, indent=1)))
        save_atomically(out / "activation.json", lambda p: p.write_text(json.dumps(activation, indent=1)))
        save_atomically(out / "checkpoint.pt", lambda p: torch.save(checkpoint, p))


def prepare_out_dir(out):
    """Create --out and prove it is writable, before any data is read or any training starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SolverError(f"cannot write to --out {out} ({error.strerror or error}); "
                          "pick a folder you can write to") from None


def load_checkpoint(out, name, bn):
    path = out / "checkpoint.pt"
    if not path.exists():
        raise SolverError(f"--resume: there is no checkpoint.pt in {out}; run without --resume to start, "
                          "or point --out at the run to continue")
    try:
        checkpoint = torch.load(path, weights_only=True)   # plain data and tensors only: no code runs
    except Exception as error:
        raise SolverError(f"--resume: {path} cannot be read ({type(error).__name__}); "
                          "delete it and start again") from None
    if (checkpoint.get("model"), checkpoint.get("bn")) != (name, bn):
        bn_flag = lambda b: "--bn" if b else "--no-bn"
        raise SolverError(f"--resume: {path} holds a {checkpoint.get('model')} run with "
                          f"{bn_flag(checkpoint.get('bn'))}, not {name} with {bn_flag(bn)}; "
                          "use the matching script and flag, or another --out")
    return checkpoint


def new_history(name, bn, params, config, device):
    return {"model": name, "bn": bn, "params": params, "config": config, "device": str(device),
            "train": {"iter": [], "loss": [], "acc": []},
            "test": {"epoch": [], "loss": [], "acc": []},
            "epoch_time_s": [], "train_time_s": 0.0, "best_test_acc": None}


# ----------------------------------------------------------------------------- the whole run

def run(name, build_model, config, bn_default, argv=None):
    """Parse the command line, train, save after every epoch; exit cleanly on every known failure."""
    args = parse_args(name, config, bn_default, argv)
    out = Path(args.out)
    command = "python " + shlex.join([f"{name}.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        _train(name, build_model, effective_config(config, args), args, out)
    except SolverError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {what_was_kept(out, command, args.resume)}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:   # whoever read the log stopped reading, as in `python cnn.py | head`
        # Point stdout at /dev/null, or Python's final flush at exit fails on the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(BrokenPipeError):   # stderr may be the same closed pipe (2>&1)
            print(f"stopped: the log's reader closed its end; {what_was_kept(out, command, args.resume)}",
                  file=sys.stderr)
        sys.exit(1)


def what_was_kept(out, command, resumed):
    """After a stop: what --out holds, and the command that carries on from there."""
    if (out / "checkpoint.pt").exists():
        return (f"{out} keeps the last finished epoch; continue with:\n  "
                f"{command}{'' if resumed else ' --resume'}")
    return f"no epoch had finished, so nothing was saved; start again with:\n  {command}"


def _train(name, build_model, config, args, out):
    device = pick_device(args.device)   # before anything is written: a wrong --device leaves no trace
    prepare_out_dir(out)
    keep_freed_memory_for_reuse()
    train_x, train_y, test_x, test_y = load_mnist(args.data_dir, device)
    if config["batch_size"] > len(train_x):
        raise SolverError(f"--batch-size {config['batch_size']} is larger than the training set "
                          f"({len(train_x)} images)")

    torch.manual_seed(config["seed"])                        # the same initial weights every time
    shuffle_gen = torch.Generator().manual_seed(config["seed"])   # the same batch order every time
    model = build_model(args.bn).to(device)
    optimizer = make_optimizer(model, config)
    params = sum(p.numel() for p in model.parameters())
    history = new_history(name, args.bn, params, config, device)
    probe = InputProbe(model)
    start_epoch = 0
    if args.resume:
        checkpoint = load_checkpoint(out, name, args.bn)
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        shuffle_gen.set_state(checkpoint["shuffle_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, start_epoch = checkpoint["history"], checkpoint["epoch"]
        history["config"] = config
        # a checkpoint written before activation.json kept the probe's record in its history
        probe.record = checkpoint.get("activation") or history.pop("activation", probe.record)
        print(f"resuming {out} after epoch {start_epoch}")

    print(f"{name}{' with BN' if args.bn else ''}: {params:,} parameters, {device}, "
          f"{config['max_epoch']} epochs, writing to {out}")
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config["max_epoch"]):
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        log = lambda text: print(f"epoch {epoch + 1:3d}  {text}  {time.perf_counter() - run_start:7.1f}s",
                                 flush=True)
        epoch_start = time.perf_counter()
        train_one_epoch(model, optimizer, train_x, train_y, config, history, shuffle_gen, probe, log)
        if device.type == "cuda":
            torch.cuda.synchronize()   # so the epoch time is the GPU's work, not its queue
        epoch_time = time.perf_counter() - epoch_start

        test_loss, test_acc = evaluate(model, test_x, test_y)
        history["test"]["epoch"].append(epoch + 1)
        history["test"]["loss"].append(test_loss)
        history["test"]["acc"].append(test_acc)
        history["epoch_time_s"].append(epoch_time)
        history["train_time_s"] = sum(history["epoch_time_s"])
        history["best_test_acc"] = max(history["test"]["acc"])
        save_run(out, history, probe.record, {
            "model": name, "bn": args.bn, "epoch": epoch + 1,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "shuffle_rng": shuffle_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history": history, "activation": probe.record})
        print(f"epoch {epoch + 1:3d}  test loss {test_loss:.4f}  acc {test_acc:.4f}  "
              f"lr {lr:.4g}  epoch time {epoch_time:.1f}s", flush=True)

    if history["test"]["acc"]:
        print(f"done: final test accuracy {history['test']['acc'][-1]:.4f} "
              f"(best {history['best_test_acc']:.4f}), training time {history['train_time_s']:.0f}s, "
              f"saved in {out}")
