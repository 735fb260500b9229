"""The training loop the three model scripts share, in the order a run needs it.

Each model script holds its network and a `config` dict, DEFAULTS below with what that network
changes, and calls `run`. Read on: the recipe and the flags, MNIST into tensors, the optimizer
and the learning-rate schedule, the random shift,
the activation probe, `train_one_epoch`, `evaluate`, saving, and the epochs (`train`, `run`).
What keeps a run safe (value checks, a lock, atomic saves, one-line failures) is in plumbing.py.
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import plumbing
from norms import NORMALIZATIONS
from plumbing import non_negative_float, non_negative_int, positive_int

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # of the 60,000 training images, pixels scaled to [0, 1]
EVAL_BATCH_SIZE = 100   # not 1,000: the conv nets' activations for 1,000 images outgrow the cache
PROBE_UNIT = 0          # the unit whose input distribution activation.json tracks

# ----------------------------------------------------------------------------- the recipe
DEFAULTS = {   # the report's SGD recipe, in its key names; a script's config changes what differs
    "learning_rate": 0.1,
    "weight_decay": 1e-4,
    "momentum": 0.9,          # SGD's momentum (BN's running-average momentum is batchnorm.py's)
    "batch_size": 100,
    "max_epoch": 100,
    "disp_freq": 50,          # iterations per log line and per point of the training curves
    # Not in the report: a cosine schedule (--plain gives the report's constant rate), epochs
    # of rising rate before it, random shifts of the training images (px).
    "lr_schedule": "cosine",
    "warmup_epochs": 0,
    "augment_shift": 0,
    "norm": "none",           # the normalization layer: a name of norms.NORMALIZATIONS
}

# ----------------------------------------------------------------------------- the flags
CONFIG_FLAGS = {  # config key (the report's name): the flag that overrides it, its check, its help
    "max_epoch": ("--epochs", positive_int, "passes over the 60,000 training images"),
    "batch_size": ("--batch-size", positive_int, "images per SGD step"),
    "learning_rate": ("--lr", non_negative_float, "SGD step size; the peak of the cosine"),
    "lr_schedule": ("--lr-schedule", plumbing.one_of("constant", "cosine"), "constant or cosine"),
    "warmup_epochs": ("--warmup-epochs", non_negative_int, "rising-rate epochs before the cosine"),
    "augment_shift": ("--augment-shift", non_negative_int, "random shifts of training images, px"),
    "weight_decay": ("--weight-decay", non_negative_float, "L2 penalty added by SGD"),
    "momentum": ("--momentum", plumbing.momentum_value,
                 "SGD's momentum (not BN's running-average momentum, batchnorm.py's 0.9)"),
    "disp_freq": ("--disp-freq", positive_int, "iterations per log line and point of the curves"),
    "norm": ("--norm", plumbing.one_of(*NORMALIZATIONS),
             "the normalization before each nonlinearity: " + ", ".join(NORMALIZATIONS)),
}


def parse_args(name, config, argv=None):
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=f"Train the {name} on MNIST with SGD (see {name}.py).")
    add = parser.add_argument
    for key, (flag, check, text) in CONFIG_FLAGS.items():
        add(flag, dest=key, type=check, default=config[key], help=f"{text} (default: %(default)s)")
    # The report's switch, kept as it was: the same value as --norm; the last one given wins.
    add("--bn", dest="norm", action="store_const", const="bn", help="the same as --norm bn")
    add("--no-bn", dest="norm", action="store_const", const="none", help="the same as --norm none")
    add("--plain", action="store_true",
        help="the report's recipe: --lr-schedule constant --warmup-epochs 0 --augment-shift 0")
    add("--seed", type=int, default=0, help="(default: %(default)s)")
    add("--device", choices=plumbing.DEVICES, default="auto", help="(default: auto)")
    add("--data-dir", default="data",
        help="a folder holding MNIST/raw/, or where to download it (default: %(default)s)")
    add("--out", default=None, help=f"where history.json, activation.json and checkpoint.pt go "
                                     f"(default: runs/{name}, or runs/{name}_<norm>)")
    add("--resume", action="store_true", help="continue from checkpoint.pt in --out")
    args = parser.parse_args(argv)
    if args.plain:
        args.lr_schedule, args.warmup_epochs, args.augment_shift = "constant", 0, 0
    if args.out is None:
        args.out = str(run_folder(name, args.norm))
    return args


def effective_config(config, args):
    """The script's config with the command line's overrides: what this run really uses."""
    return dict(config, **{key: getattr(args, key) for key in CONFIG_FLAGS}, seed=args.seed)

# ----------------------------------------------------------------------------- MNIST
def load_mnist(data_dir, device):
    """MNIST as tensors on `device`, normalised once: images (N, 1, 28, 28), labels (N,) int64."""
    def as_tensors(dataset):
        images = dataset.data.to(device=device, dtype=torch.float32).div_(255).unsqueeze(1)
        images.sub_(MNIST_MEAN).div_(MNIST_STD)
        return images, dataset.targets.to(device=device, dtype=torch.int64)

    train_set, test_set = plumbing.read_mnist(data_dir)
    return (*as_tensors(train_set), *as_tensors(test_set))

# ----------------------------------------------------------------------------- optimizer, schedule
def make_optimizer(model, config):
    """SGD with the config's rate, momentum and weight decay; foreach: one call for all tensors.

    The one place to try another optimizer, e.g. torch.optim.Adam(model.parameters(),
    lr=config["learning_rate"]); `learning_rate` below sets each group's "lr" every epoch."""
    return torch.optim.SGD(model.parameters(), lr=config["learning_rate"], foreach=True,
                           momentum=config["momentum"], weight_decay=config["weight_decay"])


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

    The uncovered border gets the background. Padding and unfolding gives every shifted window
    as a view, no copy: windows[k, dy, dx] is image k shifted by (dy - s, dx - s); one indexed
    copy picks one per image. The plain version, image by image, is test_solver.py's `translated`.
    """
    n, _, height, width = images.shape
    background = -MNIST_MEAN / MNIST_STD
    padded = F.pad(images[:, 0], (max_shift,) * 4, value=background)   # (N, H+2s, W+2s)
    windows = padded.unfold(1, height, 1).unfold(2, width, 1)          # (N, 2s+1, 2s+1, H, W)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
    return windows[torch.arange(n, device=images.device), dy, dx].unsqueeze(1)


def percentiles(values):
    """{"p15", "p50", "p85"}: the 15th, 50th and 85th percentiles of a tensor's values, the
    BN paper's Fig. 1 view of a unit's input distribution."""
    values = values.detach().flatten().float()
    quantiles = torch.tensor([0.15, 0.50, 0.85], device=values.device)
    return dict(zip(("p15", "p50", "p85"), torch.quantile(values, quantiles).tolist()))


class InputProbe:
    """How the input of the model's first ReLU moves during training (BN paper, Fig. 1).

    A forward pre-hook keeps the latest input (no work per step); `record_window(iteration)`,
    called per window, appends its percentiles for one unit (channel) to `self.record`."""

    def __init__(self, model, unit=PROBE_UNIT):
        self.latest = None
        self.record = {"layer": "input of the first ReLU", "unit": unit,
                       "iter": [], "p15": [], "p50": [], "p85": []}
        first_relu = next((m for m in model.modules() if isinstance(m, nn.ReLU)), None)
        if first_relu is not None:   # a model without ReLU records nothing
            first_relu.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.latest = inputs[0]

    def record_window(self, iteration):
        if self.latest is None:
            return
        for key, value in percentiles(self.latest[:, self.record["unit"]]).items():
            self.record[key].append(value)
        self.record["iter"].append(iteration)

# ----------------------------------------------------------------------------- one epoch
def train_one_epoch(model, optimizer, train_set, config, epoch, generator, history,
                    on_window=None, on_step=None):
    """One pass over the training set in a fresh random order (epoch `epoch`, 0-based).

    Two ways to watch it, both off by default:
      on_step(iteration, model, optimizer, images, labels, loss): every step, after
        loss.backward() and before optimizer.step(): the weights are this step's, every .grad
        is the gradient of `loss` on exactly these (images, labels) (shifted, if shifts are on);
      on_window(iteration, model): after every disp_freq steps (and the epoch's last), once the
        window's mean loss and accuracy are in history["train"].
    """
    model.train()
    train_x, train_y = train_set
    batch_size, disp_freq = config["batch_size"], config["disp_freq"]
    steps = len(train_x) // batch_size   # the incomplete last batch is dropped
    order = torch.randperm(len(train_x), generator=generator).to(train_x.device)
    window_loss, window_logits, window_labels = [], [], []

    for step in range(steps):
        iteration = epoch * steps + step + 1   # counted from the first step of the run
        batch = order[step * batch_size:(step + 1) * batch_size]
        images, labels = train_x.index_select(0, batch), train_y.index_select(0, batch)
        if config["augment_shift"]:
            images = random_shift(images, config["augment_shift"], generator)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        if on_step is not None:
            on_step(iteration, model, optimizer, images, labels, loss)
        optimizer.step()
        # Keep the numbers as tensors: reading them (.item()) each step would stall a GPU, and
        # the accuracy is counted once per window, over all of its steps' logits at once.
        window_loss.append(loss.detach())
        window_logits.append(logits.detach())
        window_labels.append(labels)

        if iteration % disp_freq == 0 or step == steps - 1:   # the window is complete
            losses = torch.stack(window_loss)
            plumbing.stop_if_diverged(losses, iteration)
            mean_loss = losses.mean().item()
            predictions = torch.cat(window_logits).argmax(dim=1)
            accuracy = (predictions == torch.cat(window_labels)).sum().item() / len(predictions)
            history["train"]["iter"].append(iteration)
            history["train"]["loss"].append(mean_loss)
            history["train"]["acc"].append(accuracy)
            if on_window is not None:
                on_window(iteration, model)
            window_loss, window_logits, window_labels = [], [], []


@torch.inference_mode()
def evaluate(model, images, labels, batch_size=EVAL_BATCH_SIZE):
    """Mean cross-entropy per sample and accuracy (a fraction) over a whole split, in eval mode
    (BN with its running estimates); every module is then put back in the mode it had."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        target = labels[start:start + batch_size]
        total_loss += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    for module, training in modes:
        module.training = training
    return total_loss.item() / len(images), correct.item() / len(images)

# ----------------------------------------------------------------------------- saving
def run_label(model, norm):
    """mlp, mlp_bn, cnn_ln, ...: a run's name in folders, figures and tables."""
    return model if norm == "none" else f"{model}_{norm}"


def run_folder(model, norm, root="runs"):
    """Where `python <model>.py --norm <norm>` saves by default: runs/cnn, runs/cnn_bn, ..."""
    return Path(root) / run_label(model, norm)


def new_history(name, norm, params, config, device):
    """history.json's content; the CPU type and thread count too, because they change the last
    digits."""
    return {"model": name, "norm": norm, "params": params, "config": config,
            "device": str(device), "threads": torch.get_num_threads(),
            "cpu": plumbing.cpu_name(),
            "train": {"iter": [], "loss": [], "acc": []},
            "test": {"epoch": [], "loss": [], "acc": []},
            "epoch_time_s": [], "train_time_s": 0.0, "best_test_acc": None}


def save_run(out, history, activation, checkpoint):
    """history.json, activation.json and checkpoint.pt of the same epoch: all three or none."""
    plumbing.save_files({out / "history.json": plumbing.json_writer(history),
                         out / "activation.json": plumbing.json_writer(activation),
                         out / "checkpoint.pt": plumbing.torch_writer(checkpoint)})

# ----------------------------------------------------------------------------- the epochs
def train(model, optimizer, data, config, generator, history, first_epoch=0,
          on_window=None, on_step=None, on_epoch=None):
    """Epochs first_epoch .. max_epoch - 1: set the rate, train, evaluate, extend `history`.

    data: (train_x, train_y, test_x, test_y); on_window and on_step go to train_one_epoch;
    on_epoch(epoch, lr) is called with the 1-based number of each epoch as it finishes."""
    train_x, train_y, test_x, test_y = data
    for epoch in range(first_epoch, config["max_epoch"]):
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_start = time.perf_counter()
        train_one_epoch(model, optimizer, (train_x, train_y), config, epoch, generator, history,
                        on_window, on_step)
        if train_x.device.type == "cuda":
            torch.cuda.synchronize()   # so the epoch time is the GPU's work, not its queue
        history["epoch_time_s"].append(time.perf_counter() - epoch_start)
        test_loss, test_acc = evaluate(model, test_x, test_y)
        history["test"]["epoch"].append(epoch + 1)
        history["test"]["loss"].append(test_loss)
        history["test"]["acc"].append(test_acc)
        history["train_time_s"] = sum(history["epoch_time_s"])
        history["best_test_acc"] = max(history["test"]["acc"])
        if on_epoch is not None:
            on_epoch(epoch + 1, lr)
    return history


def run(name, build_model, config, argv=None):
    """`python <name>.py ...`: parse the command line and train, with every failure a user can
    cause (a bad value, Ctrl-C, SIGTERM) as one line and an exit code (plumbing.py).

    build_model(norm) gives the network with the normalization that config["norm"] (or
    --norm, --bn, --no-bn) names."""
    args = parse_args(name, config, argv)
    stop_message = plumbing.run_stop_message(Path(args.out), f"{name}.py", argv, args.resume)
    with plumbing.one_line_failures(stop_message):
        train_run(name, build_model, config, args)


def train_run(name, build_model, config, args):
    """The run that parse_args' `args` describe, saved after every epoch into args.out.

    What `run` does without the command line's failure handling: a problem raises
    plumbing.SolverError, and no signal handler is touched (tests call this in-process)."""
    out = Path(args.out)
    device = plumbing.pick_device(args.device)   # a wrong --device leaves no trace
    with plumbing.claimed_out_dir(out):          # one run at a time in a folder
        _run(name, build_model, effective_config(config, args), args, out, device)


def _run(name, build_model, config, args, out, device):
    plumbing.keep_freed_memory_for_reuse()
    data = load_mnist(args.data_dir, device)
    plumbing.check_batch_size(config["batch_size"], len(data[0]))
    steps_per_epoch = len(data[0]) // config["batch_size"]

    torch.manual_seed(config["seed"])                      # the same initial weights every time
    generator = torch.Generator().manual_seed(config["seed"])   # the same batches and shifts
    norm = config["norm"]
    model = build_model(norm).to(device)
    optimizer = make_optimizer(model, config)
    params = sum(p.numel() for p in model.parameters())
    history = new_history(name, norm, params, config, device)
    probe = InputProbe(model)
    first_epoch = 0
    if args.resume:
        checkpoint = plumbing.load_checkpoint(out / "checkpoint.pt", name, norm)
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        generator.set_state(checkpoint["shuffle_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, probe.record = checkpoint["history"], checkpoint["activation"]
        first_epoch, history["config"] = checkpoint["epoch"], config
        # the machine that continues the run, as for a new one
        history["threads"], history["cpu"] = torch.get_num_threads(), plumbing.cpu_name()
        print(f"resuming {out} after epoch {first_epoch}")

    print(f"{name}{'' if norm == 'none' else ' with ' + norm}: {params:,} parameters, {device}, "
          f"{torch.get_num_threads()} threads, {config['max_epoch']} epochs, writing to {out}")
    run_start = time.perf_counter()

    def log_window(iteration, model):
        probe.record_window(iteration)
        epoch, log = math.ceil(iteration / steps_per_epoch), history["train"]
        print(f"epoch {epoch:3d}  iter {iteration:6d}  train loss {log['loss'][-1]:.4f}  acc "
              f"{log['acc'][-1]:.4f}  {time.perf_counter() - run_start:7.1f}s", flush=True)

    def save_epoch(epoch, lr):
        save_run(out, history, probe.record, {
            "model": name, "norm": norm, "epoch": epoch,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "shuffle_rng": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "history": history, "activation": probe.record})
        test = history["test"]
        print(f"epoch {epoch:3d}  test loss {test['loss'][-1]:.4f}  acc {test['acc'][-1]:.4f}  "
              f"lr {lr:.4g}  epoch time {history['epoch_time_s'][-1]:.1f}s", flush=True)

    train(model, optimizer, data, config, generator, history, first_epoch,
          on_window=log_window, on_epoch=save_epoch)
    if history["test"]["acc"]:
        print(f"done: final test accuracy {history['test']['acc'][-1]:.4f} (best "
              f"{history['best_test_acc']:.4f}), training time {history['train_time_s']:.0f}s, "
              f"saved in {out}")
