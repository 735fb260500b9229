"""Why and when Batch Normalization helps, measured: short seeded studies beyond the report.

    python experiments.py figure1      # the BN paper's Figure 1, its network and its three panels
    python experiments.py lr           # learning-rate robustness, with and without BN
    python experiments.py batch        # batch size: eval mode against a forgotten model.eval()
    python experiments.py momentum     # the momentum convention mix-up (0.9 here is 0.1 in torch)
    python experiments.py init         # initialisation scale, as in CS231n's assignment
    python experiments.py population   # momentum running estimates against population statistics
    python experiments.py detach       # the BN paper's section 2: detached statistics
    python experiments.py all          # every study (about 10 minutes on a 2-core CPU)
    python experiments.py all --quick  # every study shrunk to seconds, for tests and a first look

Each study trains with solver.py's loop (`solver.train`, recording through its per-window
callback) and batchnorm.py's layers, saves its numbers as <out>/<study>.json, draws one
figure into --figures and prints a small table. Every study is seeded: the same command gives
the same numbers on the CPU. Unless a study says otherwise, training uses the report's SGD
(momentum 0.9, weight decay 1e-4) at a constant rate, on the report's MLP (mlp.build_model).
"""
import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # headless: files only, no window
import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm
import cnn
import mlp
import plumbing
import solver
from batchnorm import BatchNorm1d

CHANCE = 0.11   # test accuracy at or below this after training: "stuck" (10 classes)
DPI = 110
COLORS = {True: "tab:blue", False: "tab:orange"}   # with BN, without BN


class Study:
    """What every study shares: the data, the device, the seed, where results go, the clock."""

    def __init__(self, args, data):
        self.args, self.data, self.quick = args, data, args.quick
        self.device, self.seed = data[0].device, args.seed
        self.start = time.perf_counter()

    def config(self, **overrides):
        """mlp.py's config with the report's plain recipe: constant rate, no warm-up, no shifts."""
        plain = dict(lr_schedule="constant", warmup_epochs=0, augment_shift=0, max_epoch=1, seed=self.seed)
        return {**mlp.config, **plain, **overrides}

    def model(self, build):
        """build() under the seed, on the device: the same initial weights every time."""
        torch.manual_seed(self.seed)
        return build().to(self.device)

    def fit(self, model, config, on_window=lambda iteration, model: None,
            on_epoch=lambda epoch, lr: None, data=None):
        """Train the model with solver.train; returns (history, outcome).

        outcome: "ok", "diverged" (a non-finite loss stopped it) or "stuck" (finite, but the
        final test accuracy at chance).
        """
        optimizer = solver.make_optimizer(model, config)
        generator = torch.Generator().manual_seed(self.seed)
        history = solver.new_history("experiment", None, 0, config, self.device)
        try:
            solver.train(model, optimizer, data or self.data, config, generator, history,
                         on_window=on_window, on_epoch=on_epoch)
        except plumbing.Diverged:
            return history, "diverged"
        return history, "stuck" if history["test"]["acc"][-1] <= CHANCE else "ok"

    def progress(self, study, setting, result):
        print(f"{study:10s} {setting:34s} {result:40s} {time.perf_counter() - self.start:7.1f}s", flush=True)

    def save(self, study, results, fig):
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        plumbing.save_files({out / f"{study}.json": plumbing.json_writer(results)})
        figures = Path(self.args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(figures / FIGURES[study], dpi=DPI)
        plt.close(fig)


def accuracy(model, images, labels):
    """Test accuracy in eval mode; the model is put back into training mode afterwards."""
    acc = solver.evaluate(model, images, labels)[1]
    model.train()
    return acc


def mlp_with(bn):
    return lambda: mlp.build_model(bn)


def show(outcome, acc):
    return f"{acc:.2%}" if outcome == "ok" else f"{outcome} ({acc:.2%})" if acc is not None else outcome


def print_table(header, rows):
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


# ----------------------------------------------------------------------------- figure1

def figure1_network(bn):
    """The BN paper's section 4.1 network: 784 -> 3 x 100 sigmoid units -> 10, cross-entropy.

    With BN, a batchnorm.py layer normalises each W u before its sigmoid, and the bias is
    dropped (beta takes its place). Weights start N(0, 0.01^2), biases 0: our rule, fixed
    before the run (the paper says only "small random Gaussian values").
    """
    layers, n_in = [nn.Flatten()], 28 * 28
    for _ in range(3):
        layers += [nn.Linear(n_in, 100, bias=not bn), *([BatchNorm1d(100)] if bn else []), nn.Sigmoid()]
        n_in = 100
    network = nn.Sequential(*layers, nn.Linear(100, 10))
    for module in network:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network


def study_figure1(study):
    """Section 4.1: 50,000 steps of 60 binary images; plain SGD at the report's rate, 0.1."""
    train_x, train_y, test_x, test_y = study.data
    threshold = (0.5 - solver.MNIST_MEAN) / solver.MNIST_STD   # pixel >= 0.5 in [0, 1] terms
    binary = lambda images: (images >= threshold).float()     # "a 28x28 binary image"
    data = (binary(train_x), train_y, binary(test_x), test_y)
    steps, every = (60, 10) if study.quick else (50_000, 500)
    per_epoch = len(train_x) // 60
    config = study.config(batch_size=60, momentum=0.0, weight_decay=0.0, disp_freq=every,
                          max_epoch=-(-steps // per_epoch))   # whole epochs covering `steps`
    probe_images = data[2][:1000]
    results = {"rule": "plain SGD, lr 0.1, batch 60, weights N(0, 0.01^2), binary input",
               "steps": config["max_epoch"] * per_epoch, "unit": 0}
    for bn in (False, True):
        record = {"step": [], "test_acc": [], "p15": [], "p50": [], "p85": []}
        latest = {}

        def keep_input(module, inputs):
            latest["x"] = inputs[0]

        def on_window(iteration, model):
            record["step"].append(iteration)
            record["test_acc"].append(accuracy(model, data[2], data[3]))
            model.eval()   # the last sigmoid's input over 1,000 fixed test images, as at inference
            with torch.no_grad():
                model(probe_images)
            unit = latest["x"][:, results["unit"]]
            for key, q in (("p15", 0.15), ("p50", 0.50), ("p85", 0.85)):
                record[key].append(torch.quantile(unit, q).item())
            model.train()

        network = study.model(lambda: figure1_network(bn))
        last_sigmoid = [m for m in network if isinstance(m, nn.Sigmoid)][-1]
        last_sigmoid.register_forward_pre_hook(keep_input)
        _, outcome = study.fit(network, config, on_window=on_window, data=data)
        results["bn" if bn else "no_bn"] = dict(record, outcome=outcome)
        study.progress("figure1", f"{'with' if bn else 'without'} BN, {results['steps']:,} steps",
                       show(outcome, record["test_acc"][-1] if record["test_acc"] else None))

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for bn, key in ((False, "no_bn"), (True, "bn")):
        axes[0].plot(results[key]["step"], results[key]["test_acc"], color=COLORS[bn],
                     label="with BN" if bn else "without BN")
    axes[0].set(xlabel="training step", ylabel="test accuracy", title="(a) test accuracy", ylim=(0.7, 1.0))
    axes[0].legend()
    for ax, key, bn, title in ((axes[1], "no_bn", False, "(b) without BN"), (axes[2], "bn", True, "(c) with BN")):
        for p, style in (("p85", ":"), ("p50", "-"), ("p15", "--")):
            ax.plot(results[key]["step"], results[key][p], style, color=COLORS[bn], label=f"{p[1:]}th percentile")
        ax.set(xlabel="training step", ylabel="input of a last-layer sigmoid", title=title)
        ax.legend(fontsize=7, framealpha=0.6, loc="upper right" if key == "no_bn" else "center right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("The BN paper's Figure 1, redone: 3 x 100 sigmoid units, batches of 60")
    print_table(["network", "final test acc", "p15 / p50 / p85 at the end"],
                [(key, f"{results[key]['test_acc'][-1]:.4f}",
                  " / ".join(f"{results[key][p][-1]:+.2f}" for p in ("p15", "p50", "p85")))
                 for key in ("no_bn", "bn") if results[key]["test_acc"]])
    study.save("figure1", results, fig)


# ----------------------------------------------------------------------------- lr and init

def sweep(study, name, key, values, make):
    """Train make(bn, value) -> (model, config) for every value, without BN then with BN.

    Returns {"no_bn": [...], "bn": [...]}, one {key: value, "outcome", "test_acc"} per value
    (test_acc None where the loss diverged)."""
    results = {"no_bn": [], "bn": []}
    for bn in (False, True):
        for value in values:
            history, outcome = study.fit(*make(bn, value))
            acc = history["test"]["acc"][-1] if outcome != "diverged" else None
            results["bn" if bn else "no_bn"].append({key: value, "outcome": outcome, "test_acc": acc})
            study.progress(name, f"{'with' if bn else 'without'} BN, {key} {value:g}", show(outcome, acc))
    return results


def draw_sweep(results, key, label, xlabel, ylabel, title):
    """Test accuracy against the swept value, the two failures marked; prints the table too."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for bn in (False, True):
        points = results["bn" if bn else "no_bn"]
        ax.plot([p[key] for p in points], [p["test_acc"] if p["test_acc"] is not None else 0 for p in points],
                "o-", color=COLORS[bn], label="with BN" if bn else "without BN")
        for kind, marker in (("diverged", "x"), ("stuck", "o")):
            marked = [p for p in points if p["outcome"] == kind]
            ax.scatter([p[key] for p in marked], [p["test_acc"] or 0 for p in marked], marker=marker, s=80,
                       color=COLORS[bn], zorder=3, label=f"{kind} ({'with' if bn else 'without'} BN)")
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    print_table([label, "without BN", "with BN"],
                [(f"{a[key]:g}", show(a["outcome"], a["test_acc"]), show(b["outcome"], b["test_acc"]))
                 for a, b in zip(results["no_bn"], results["bn"])])
    return fig


def study_lr(study):
    """Final test accuracy against a constant learning rate, the same budget for each."""
    rates = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    epochs = 3 if study.quick else 2   # quick: 3 passes over a slice, so the failures show
    make = lambda bn, lr: (study.model(mlp_with(bn)), study.config(learning_rate=lr, max_epoch=epochs))
    results = {"rates": rates, "epochs": epochs, **sweep(study, "lr", "lr", rates, make)}
    fig = draw_sweep(results, "lr", "lr", "learning rate (constant)", f"test accuracy after {epochs} epoch(s)",
                     "MLP 784-128-64-10: learning-rate robustness")
    study.save("lr", results, fig)


def scaled_init(bn, scale):
    """mlp.py's network with every linear weight drawn from N(0, scale^2) (CS231n's weight_scale)."""
    def build():
        model = mlp.build_model(bn)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, scale)
        return model
    return build


def study_init(study):
    """Test accuracy after one epoch against the initial weight scale s, with and without BN."""
    scales = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]
    make = lambda bn, scale: (study.model(scaled_init(bn, scale)), study.config())
    results = {"scales": scales, **sweep(study, "init", "scale", scales, make)}
    fig = draw_sweep(results, "scale", "s", "weight scale s: every weight ~ N(0, s^2)",
                     "test accuracy after one epoch", "Initialisation scale (CS231n's experiment), MLP 784-128-64-10")
    study.save("init", results, fig)


# ----------------------------------------------------------------------------- batch

@torch.no_grad()
def batch_statistics_accuracy(model, images, labels, batch_size):
    """Test accuracy with BN left in training mode (a forgotten model.eval()), batches of batch_size.

    On a copy, so that the running estimates of the real model are not moved."""
    model = copy.deepcopy(model).train()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if len(batch) < 2:   # a batch of one has no variance
            break
        correct += (model(batch).argmax(dim=1) == labels[start:start + len(batch)]).sum().item()
    return correct / len(images)


def study_batch(study):
    """Batch sizes 2..512, each seeing one epoch; the rate scaled linearly, 0.1 * B / 100."""
    sizes = [2, 4, 8, 16, 32, 64] if study.quick else [2, 4, 8, 32, 128, 512]
    results = {"sizes": sizes, "rule": "lr = 0.1 * batch / 100, one epoch", "rows": []}
    _, _, test_x, test_y = study.data
    for size in sizes:
        config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                              disp_freq=max(1, 5000 // size))
        row = {"batch": size}
        for bn in (True, False):
            model = study.model(mlp_with(bn))
            history, outcome = study.fit(model, config)
            row["bn_eval" if bn else "no_bn"] = history["test"]["acc"][-1] if outcome != "diverged" else None
            if bn:
                row["bn_batch_stats"] = batch_statistics_accuracy(model, test_x, test_y, size)
        results["rows"].append(row)
        study.progress("batch", f"batch {size}, lr {config['learning_rate']:g}",
                       f"BN eval {row['bn_eval']:.2%}, batch stats {row['bn_batch_stats']:.2%}, "
                       f"no BN {row['no_bn']:.2%}")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = results["rows"]
    ax.plot(sizes, [r["bn_eval"] for r in rows], "o-", color=COLORS[True], label="with BN, eval mode (running estimates)")
    ax.plot(sizes, [r["bn_batch_stats"] for r in rows], "s--", color="tab:green",
            label="with BN, statistics of each test batch (no model.eval())")
    ax.plot(sizes, [r["no_bn"] for r in rows], "^-", color=COLORS[False], label="without BN")
    ax.set(xscale="log", xlabel="batch size (training and test)", ylabel="test accuracy after one epoch",
           title="Batch size, and the train/eval gap of BN")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    print_table(["batch", "lr", "BN, eval mode", "BN, batch statistics", "no BN"],
                [(r["batch"], f"{0.1 * r['batch'] / 100:g}", f"{r['bn_eval']:.4f}", f"{r['bn_batch_stats']:.4f}",
                  f"{r['no_bn']:.4f}") for r in rows])
    study.save("batch", results, fig)


# ----------------------------------------------------------------------------- momentum

def study_momentum(study):
    """The report's momentum 0.9 (torch's 0.1) against 0.1 in the report's convention."""
    sizes = [100, 8]
    last = 20 if study.quick else 200
    _, _, test_x, test_y = study.data
    results = {"last_steps": last, "runs": []}
    for size in sizes:
        for momentum in (0.9, 0.1):
            record = {"batch": size, "momentum": momentum, "step": [], "test_acc": [],
                      "running_mean": [], "batch_mean": []}
            config = study.config(batch_size=size, learning_rate=0.1 * size / 100, disp_freq=1)
            total_steps = len(study.data[0]) // size

            model = study.model(lambda: mlp.build_model(True))
            for layer in batchnorm.batchnorm_layers(model):
                layer.momentum = momentum
            first_bn, latest = batchnorm.batchnorm_layers(model)[0], {}

            def keep_batch_mean(layer, inputs):
                if layer.training:   # not during the evaluations below
                    latest["batch_mean"] = inputs[0][:, 0].mean().item()

            def on_window(iteration, model):
                if iteration > total_steps - last:
                    record["step"].append(iteration)
                    record["batch_mean"].append(latest["batch_mean"])
                    record["running_mean"].append(first_bn.running_mean[0].item())
                    record["test_acc"].append(accuracy(model, test_x, test_y))

            first_bn.register_forward_pre_hook(keep_batch_mean)
            study.fit(model, config, on_window=on_window)
            results["runs"].append(record)
            accs = record["test_acc"]
            study.progress("momentum", f"batch {size}, momentum {momentum} (ours)",
                           f"eval acc over last {last} steps {min(accs):.2%}..{max(accs):.2%}")

    fig, axes = plt.subplots(2, len(sizes), figsize=(12, 6.5), squeeze=False)
    for column, size in enumerate(sizes):
        for run in [r for r in results["runs"] if r["batch"] == size]:
            label = f"momentum {run['momentum']} (torch: {1 - run['momentum']:.1f})"
            color = "tab:blue" if run["momentum"] == 0.9 else "tab:red"
            axes[0][column].plot(run["step"], run["test_acc"], color=color, label=label)
            axes[1][column].plot(run["step"], run["running_mean"], color=color, label=f"running mean, {label}")
            axes[1][column].plot(run["step"], run["batch_mean"], ".", color=color, ms=3, alpha=0.5,
                                 label=f"batch means, {label}")
        axes[0][column].set(title=f"batch {size}: eval-mode test accuracy, last {last} steps", ylabel="test accuracy")
        axes[1][column].set(title=f"batch {size}: first BN layer, unit 0", xlabel="training step",
                            ylabel="mean of its input")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    print_table(["batch", "momentum (ours)", "eval acc: min", "max", "spread", "running mean: std over the steps"],
                [(r["batch"], r["momentum"], f"{min(r['test_acc']):.4f}", f"{max(r['test_acc']):.4f}",
                  f"{max(r['test_acc']) - min(r['test_acc']):.4f}",
                  f"{torch.tensor(r['running_mean']).std().item():.4f}") for r in results["runs"]])
    study.save("momentum", results, fig)


# ----------------------------------------------------------------------------- population

def estimate_gaps(running, population):
    """How far the momentum estimates lie from the population's, per layer, averaged over channels.

    Means are compared in units of the population's standard deviation; variances as a ratio."""
    gaps = []
    for ours, pop in zip(running, population):
        std = pop.running_var.sqrt()
        gaps.append({"mean": ((ours.running_mean - pop.running_mean).abs() / std).mean().item(),
                     "var": (ours.running_var / pop.running_var - 1).abs().mean().item()})
    return gaps


def study_population(study):
    """The report's plain recipe (constant rate 0.1) for a few epochs: eval with the momentum
    estimates against the recalibrated population statistics (BN paper, Algorithm 2)."""
    epochs = 1 if study.quick else 5
    train_x, _, test_x, test_y = study.data
    results = {"epochs": epochs, "models": {}}
    for name, script in (("mlp", mlp), ("cnn", cnn)):
        record = {"epoch": [], "running_acc": [], "population_acc": [], "gaps": []}

        model = study.model(lambda: script.build_model(True))

        def on_epoch(epoch, lr):
            population = copy.deepcopy(model)
            batches = train_x[: len(train_x) // 100 * 100].split(100)   # the whole set, batches of 100
            batchnorm.recalibrate(population, batches)
            record["epoch"].append(epoch)
            record["running_acc"].append(accuracy(model, test_x, test_y))
            record["population_acc"].append(solver.evaluate(population, test_x, test_y)[1])
            record["gaps"].append(estimate_gaps(batchnorm.batchnorm_layers(model),
                                                batchnorm.batchnorm_layers(population)))

        study.fit(model, study.config(max_epoch=epochs), on_epoch=on_epoch)   # the same recipe for both
        results["models"][name] = record
        study.progress("population", f"{name} with BN, {epochs} epochs, constant lr 0.1",
                       f"running {record['running_acc'][-1]:.2%}, population {record['population_acc'][-1]:.2%}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (name, record), color in zip(results["models"].items(), ("tab:blue", "tab:purple")):
        axes[0].plot(record["epoch"], record["running_acc"], "o-", color=color, label=f"{name}: running estimates")
        axes[0].plot(record["epoch"], record["population_acc"], "s--", color=color, label=f"{name}: population")
        for layer in range(len(record["gaps"][0])):
            axes[1].plot(record["epoch"], [g[layer]["var"] for g in record["gaps"]], "o-", color=color,
                         alpha=1 - 0.4 * layer, label=f"{name} BN {layer + 1}: variance, relative")
            axes[1].plot(record["epoch"], [g[layer]["mean"] for g in record["gaps"]], "s--", color=color,
                         alpha=1 - 0.4 * layer, label=f"{name} BN {layer + 1}: mean, in std units")
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="eval with momentum estimates vs population stats")
    axes[1].set(xlabel="epoch", ylabel="mean |running - population|", yscale="log",
                title="how far the two sets of estimates are apart")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    print_table(["model", "epoch", "test acc, running", "test acc, population", "gap (mean / var), layer 1"],
                [(name, e, f"{r['running_acc'][i]:.4f}", f"{r['population_acc'][i]:.4f}",
                  f"{r['gaps'][i][0]['mean']:.3f} / {r['gaps'][i][0]['var']:.3f}")
                 for name, r in results["models"].items() for i, e in enumerate(r["epoch"])])
    study.save("population", results, fig)


# ----------------------------------------------------------------------------- detach

def study_detach(study):
    """mlp.py's network with biases before BN, trained with the true gradient and with
    detach_stats=True (mu_B, sigma_B^2 as constants); no weight decay, so nothing but the
    gradient moves the biases."""
    epochs = 1 if study.quick else 3
    config = study.config(max_epoch=epochs, weight_decay=0.0)
    results = {"epochs": epochs}
    for detach in (False, True):
        record = {"iter": [], "bias_norm": [], "weight_norm": [], "bias_grad": [], "weight_grad": []}

        model = study.model(lambda: mlp.build_model(True, bias=True))
        for layer in batchnorm.batchnorm_layers(model):
            layer.detach_stats = detach
        hidden = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
        record["bias_norm_at_start"] = sum(m.bias.norm() ** 2 for m in hidden).sqrt().item()

        def on_window(iteration, model):
            record["iter"].append(iteration)
            record["bias_norm"].append(sum(m.bias.norm() ** 2 for m in hidden).sqrt().item())
            record["weight_norm"].append(sum(m.weight.norm() ** 2 for m in hidden).sqrt().item())
            record["bias_grad"].append(sum(m.bias.grad.norm() ** 2 for m in hidden).sqrt().item())
            record["weight_grad"].append(sum(m.weight.grad.norm() ** 2 for m in hidden).sqrt().item())

        history, outcome = study.fit(model, config, on_window=on_window)
        record.update(outcome=outcome, test_acc=history["test"]["acc"], train_loss=history["train"]["loss"])
        results["detached" if detach else "true"] = record
        acc = history["test"]["acc"][-1] if history["test"]["acc"] else None
        study.progress("detach", "detach_stats=True" if detach else "true gradient",
                       f"{show(outcome, acc)}, bias norm {record['bias_norm'][-1]:.3g}")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for key, color, label in (("true", "tab:blue", "true gradient"), ("detached", "tab:red", "detach_stats=True")):
        r = results[key]
        axes[0].plot(r["iter"], r["train_loss"], color=color, lw=0.8, label=label)
        axes[1].plot(r["iter"], r["bias_norm"], color=color, label=f"{label}: biases before BN")
        axes[1].plot(r["iter"], r["weight_norm"], "--", color=color, label=f"{label}: weights")
        ratio = [b / w for b, w in zip(r["bias_grad"], r["weight_grad"])]
        axes[2].plot(r["iter"], ratio, color=color, label=label)
    axes[0].set(xlabel="iteration", ylabel="train loss (50-step window)", yscale="log", title="training")
    axes[1].set(xlabel="iteration", ylabel="norm", yscale="log", title="hidden layers' biases and weights")
    axes[2].set(xlabel="iteration", ylabel="|grad bias| / |grad W|", yscale="log",
                title="gradient of the bias before BN")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    print_table(["gradient", "final test acc", "bias norm: initial / end", "|grad b| / |grad W| (median)"],
                [(key, f"{results[key]['test_acc'][-1]:.4f}" if results[key]["test_acc"] else "-",
                  f"{results[key]['bias_norm_at_start']:.3g} / {results[key]['bias_norm'][-1]:.3g}",
                  f"{torch.tensor(results[key]['bias_grad']).div(torch.tensor(results[key]['weight_grad'])).median():.2e}")
                 for key in ("true", "detached")])
    study.save("detach", results, fig)


STUDIES = {"figure1": study_figure1, "lr": study_lr, "batch": study_batch, "momentum": study_momentum,
           "init": study_init, "population": study_population, "detach": study_detach}
FIGURES = {"figure1": "bn_paper_figure1.png", "lr": "lr_robustness.png", "batch": "batch_size.png",
           "momentum": "momentum_convention.png", "init": "init_scale.png",
           "population": "population_statistics.png", "detach": "detached_statistics.png"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--data-dir", default="data", help="a folder holding MNIST/raw/")
    parser.add_argument("--device", choices=plumbing.DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/experiments", help="where each study's JSON goes")
    parser.add_argument("--figures", default="figures", help="where each study's figure goes")
    parser.add_argument("--quick", action="store_true", help="every study shrunk to seconds")
    args = parser.parse_args(argv)
    with plumbing.one_line_failures(lambda: f"the studies that finished are saved in {args.out}"):
        device = plumbing.pick_device(args.device)
        data = solver.load_mnist(args.data_dir, device)
        if args.quick:   # a slice of MNIST: seconds, not minutes
            data = (data[0][:1200], data[1][:1200], data[2][:1000], data[3][:1000])
        study = Study(args, data)
        for name in STUDIES if args.study == "all" else [args.study]:
            STUDIES[name](study)
        print(f"experiments.py {args.study}{' --quick' if args.quick else ''}: "
              f"{time.perf_counter() - study.start:.0f} s")


if __name__ == "__main__":
    main()
