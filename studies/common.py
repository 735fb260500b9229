"""What every study shares: the data, the seed, training through solver.py's loop, the small
tables, saving a study's JSON and figure in the repository's one figure style (plot.py's)."""
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import mlp
import plot   # the figure style: headless backend, DPI, a colour and a label per normalization
import plumbing
import solver

CHANCE = 0.11   # test accuracy at or below this after training: "stuck" (10 classes)


def norm_of(bn):
    return "bn" if bn else "none"


def color(bn):
    """The figure colour of the network with (bn=True) or without BN, as in plot.py's figures."""
    return plot.NORM_COLORS[norm_of(bn)]


def label(bn):
    return plot.NORM_LABELS[norm_of(bn)]


class Study:
    """What every study shares: the data, the device, the seed, where results go, the clock."""

    def __init__(self, args, data):
        self.args, self.data, self.quick = args, data, args.quick
        self.device, self.seed = data[0].device, args.seed
        self.start = time.perf_counter()

    def config(self, **overrides):
        """mlp.py's config with the report's plain recipe: constant rate, no warm-up, no shifts."""
        plain = dict(lr_schedule="constant", warmup_epochs=0, augment_shift=0, max_epoch=1,
                     seed=self.seed)
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
        history = solver.new_history("experiment", config.get("norm"), 0, config, self.device)
        try:
            solver.train(model, optimizer, data or self.data, config, generator, history,
                         on_window=on_window, on_epoch=on_epoch)
        except plumbing.Diverged:
            return history, "diverged"
        return history, "stuck" if history["test"]["acc"][-1] <= CHANCE else "ok"

    def progress(self, study, setting, result):
        print(f"{study:10s} {setting:34s} {result:40s} "
              f"{time.perf_counter() - self.start:7.1f}s", flush=True)

    def save(self, study, results, fig, figure_name):
        """<out>/<study>.json and the figure, into --figures, in plot.py's style."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        plumbing.save_files({out / f"{study}.json": plumbing.json_writer(results)})
        figures = Path(self.args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        plot.save_figure(fig, figures / figure_name)


def accuracy(model, images, labels):
    """Test accuracy in eval mode; the model is put back into training mode afterwards."""
    acc = solver.evaluate(model, images, labels)[1]
    model.train()
    return acc


def mlp_with(bn):
    return lambda: mlp.build_model(norm_of(bn))


def show(outcome, acc):
    if outcome == "ok":
        return f"{acc:.2%}"
    return f"{outcome} ({acc:.2%})" if acc is not None else outcome


def print_table(header, rows):
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


# ----------------------------------------------------------------------------- sweeps (lr, init)

def sweep(study, name, key, values, make):
    """Train make(bn, value) -> (model, config) for every value, without BN then with BN.

    Returns {"no_bn": [...], "bn": [...]}, one {key: value, "outcome", "test_acc"} per value
    (test_acc None where the loss diverged)."""
    results = {"no_bn": [], "bn": []}
    for bn in (False, True):
        for value in values:
            history, outcome = study.fit(*make(bn, value))
            acc = history["test"]["acc"][-1] if outcome != "diverged" else None
            results["bn" if bn else "no_bn"].append({key: value, "outcome": outcome,
                                                     "test_acc": acc})
            study.progress(name, f"{label(bn)}, {key} {value:g}", show(outcome, acc))
    return results


def draw_sweep(results, key, column, xlabel, ylabel, title):
    """Test accuracy against the swept value, the two failures marked; prints the table too."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for bn in (False, True):
        points = results["bn" if bn else "no_bn"]
        accs = [p["test_acc"] if p["test_acc"] is not None else 0 for p in points]
        ax.plot([p[key] for p in points], accs, "o-", color=color(bn), label=label(bn))
        for kind, marker in (("diverged", "x"), ("stuck", "o")):
            marked = [p for p in points if p["outcome"] == kind]
            ax.scatter([p[key] for p in marked], [p["test_acc"] or 0 for p in marked],
                       marker=marker, s=80, color=color(bn), zorder=3,
                       label=f"{kind} ({label(bn)})")
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    print_table([column, "without BN", "with BN"],
                [(f"{a[key]:g}", show(a["outcome"], a["test_acc"]),
                  show(b["outcome"], b["test_acc"]))
                 for a, b in zip(results["no_bn"], results["bn"])])
    return fig
