"""Figures and tables from saved runs: the report's, and views it never had.

    python plot.py                       # every run under runs/, figures into runs/figures/
    python plot.py runs/cnn runs/cnn_bn --figures /tmp/cnn_figures

The committed figures/ are rewritten only when asked: by reproduce.py (which passes
--figures figures) or by an explicit --figures figures.

Per run (from history.json):
    <run>_train.png   train loss and accuracy per iteration (report Fig. 3.2)
    <run>_test.png    test loss and accuracy per epoch      (report Fig. 3.3)
Per model with and without BN:
    <model>_bn_vs_no_bn.png   the same curves overlaid
    <model>_norms.png         every normalization of the model overlaid, where it has a run of
                              one besides BN (--norm ln, gn, brn)
    <model>_activation.png    (from activation.json) 15th/50th/85th percentiles of one
                              first-layer unit's input during training (BN paper, Fig. 1)
Per run (from checkpoint.pt and the test set, if --data-dir holds MNIST):
    <run>_confusion.png, <run>_mistakes.png (most confident errors)
All runs:
    table.md, the report's Tables 3.1/3.2 (also printed)

The figure style (resolution, width and text sizes for README width, log axes without
multipliers, a colour and a label per normalization, the headless backend) is defined here
once; experiments.py's studies draw with it too.
"""
import argparse
import json
import math
import pickle
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # headless: files only, no window
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

import plumbing
import registry
import solver

# ----------------------------------------------------------------------------- the figure style

DPI = 110
NORM_COLORS = {"none": "tab:orange", "bn": "tab:blue", "ln": "tab:green", "gn": "tab:purple",
               "brn": "tab:red"}                          # one colour per normalization
NORM_LABELS = {"none": "without BN", "bn": "with BN", "ln": "with LayerNorm",
               "gn": "with GroupNorm", "brn": "with Batch Renorm"}   # "MLP with BN"


# Read at README width (about 830 px): a figure is at most WIDTH inches (WIDTH * DPI = 1045 px,
# shrunk by a fifth there) and at most two panels across, its text at these sizes; no axis
# writes an offset ("+0.97") or a multiplier ("1e12") beside its ticks: a figure whose values
# span decades uses a log (or symlog) axis, an accuracy is drawn in percent or in points.
WIDTH = 9.5
STYLE = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10,
         "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "legend.fontsize": 9,
         "figure.titlesize": 11.5, "axes.formatter.useoffset": False}
matplotlib.rcParams.update(STYLE)


class PlainLog(LogFormatterSciNotation):
    """Log-axis tick labels as plain numbers (0.2, 3, 60) on an axis within 0.001 to 10,000,
    as powers of ten on one reaching beyond; labelled where matplotlib's log formatter would
    label (minor ticks only on an axis spanning few decades)."""

    def __call__(self, x, pos=None):
        text = super().__call__(x, pos)
        low, high = sorted(abs(v) for v in self.axis.get_view_interval())
        return f"{x:g}" if text and low >= 0.9e-3 and high <= 1.1e4 else text


def log_axis(ax, axis="y"):
    """A log axis with PlainLog's labels: 0.2 rather than 2 x 10^-1."""
    getattr(ax, f"set_{axis}scale")("log")
    for which in ("major", "minor"):
        getattr(getattr(ax, f"{axis}axis"), f"set_{which}_formatter")(PlainLog())


def readme_problems(fig):
    """What keeps a drawn figure from reading at README width (the rule above WIDTH), as lines:
    wider than WIDTH, more than two columns of panels (axes whose left edges lie apart by more
    than a tenth of the figure; twins and failure strips share their panel's column), an axis
    with an offset or multiplier beside its ticks. Empty: none."""
    fig.canvas.draw()
    problems = []
    if fig.get_figwidth() > WIDTH + 1e-9:
        problems.append(f"{fig.get_figwidth():g} inches wide (at most {WIDTH})")
    lefts = sorted(ax.get_position().x0 for ax in fig.axes if ax.axison)
    columns = sum(1 for a, b in zip([-1.0, *lefts], lefts) if b - a > 0.1)
    if columns > 2:
        problems.append(f"{columns} columns of panels")
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if axis.get_offset_text().get_visible() and axis.get_offset_text().get_text():
                problems.append(f"{ax.get_title()!r}: {axis.get_offset_text().get_text()!r} "
                                f"beside its {name} ticks")
    return problems


def save_figure(fig, path):
    """Every figure of the repository is written this way: laid out (tight, unless the figure
    was made with a layout of its own, such as constrained), DPI, closed."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def run_label(history):
    return solver.run_label(history["model"], history["norm"])


def case_name(history):
    model = "mini-ResNet" if history["model"] == "resnet" else history["model"].upper()
    return f"{model} {NORM_LABELS[history['norm']]}"

# ----------------------------------------------------------------------------- reading runs

# the keys of history.json that plot.py needs: all but `cpu`, which runs saved before it was
# recorded lack, and which no figure or table here reads
HISTORY_KEYS = tuple(key for key in solver.new_history("mlp", "none", 0, {}, "cpu")
                     if key != "cpu")

def load_runs(run_dirs):
    """(folder, history) per run; a folder that is not a finished-epoch run of ours stops with
    one line."""
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "history.json"
        if not path.exists():
            sys.exit(f"error: {path} not found; give folders written by mlp.py, cnn.py or "
                     "resnet.py (--out)")
        try:
            history = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            sys.exit(f"error: {path} is not valid JSON ({error}); train that run again or leave "
                     "its folder out")
        missing = [key for key in HISTORY_KEYS
                   if not isinstance(history, dict) or key not in history]
        if missing or history["model"] not in registry.MODEL_NAMES:
            why = ("it lacks " + ", ".join(missing) if missing
                   else "unknown model " + repr(history["model"]))
            sys.exit(f"error: {path} was not written by mlp.py, cnn.py or resnet.py ({why}); "
                     "leave its folder out")
        runs.append((Path(run_dir), history))
    return runs


def load_activation(run_dir):
    """The run's activation.json (one unit's input percentiles), or None if it has none or it
    is unreadable."""
    path = Path(run_dir) / "activation.json"
    try:
        activation = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    keys = ("unit", "iter", "p15", "p50", "p85")
    readable = isinstance(activation, dict) and all(key in activation for key in keys)
    return activation if readable else None


# ----------------------------------------------------------------------------- curves

def _draw_curves(axes, history, label=None, color=None):
    """Train loss, train accuracy (per window), test loss, test accuracy (per epoch): four axes."""
    train, test = history["train"], history["test"]
    axes[0].plot(train["iter"], train["loss"], label=label, color=color, lw=0.8)
    axes[1].plot(train["iter"], train["acc"], label=label, color=color, lw=0.8)
    axes[2].plot(test["epoch"], test["loss"], label=label, color=color, marker=".")
    axes[3].plot(test["epoch"], test["acc"], label=label, color=color, marker=".")


def _label_axes(axes):
    labels = [("iteration", "train loss"), ("iteration", "train accuracy"),
              ("epoch", "test loss"), ("epoch", "test accuracy")]
    for ax, (xlabel, ylabel) in zip(axes, labels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    log_axis(axes[0])
    log_axis(axes[2])
    for ax in axes[2:]:   # whole epochs
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_run(history, out):
    """The report's two figures for one run: training curves per iteration, test curves per
    epoch."""
    label = run_label(history)
    fig_train, train_axes = plt.subplots(1, 2, figsize=(WIDTH, 3.8))
    fig_test, test_axes = plt.subplots(1, 2, figsize=(WIDTH, 3.8))
    axes = [*train_axes, *test_axes]
    _draw_curves(axes, history, color=NORM_COLORS[history["norm"]])
    _label_axes(axes)
    window = history["config"]["disp_freq"]
    fig_train.suptitle(f"{case_name(history)}: training (mean over each {window}-iteration window)")
    fig_test.suptitle(f"{case_name(history)}: test set after each epoch")
    return [save_figure(fig_train, out / f"{label}_train.png"),
            save_figure(fig_test, out / f"{label}_test.png")]


def plot_comparison(histories, path, title):
    """The four curves of several runs of one model overlaid, a colour per normalization."""
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH, 7))
    axes = axes.flatten()
    for history in histories:
        _draw_curves(axes, history, label=case_name(history), color=NORM_COLORS[history["norm"]])
    _label_axes(axes)
    for ax in axes:
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_bn_comparison(with_bn, without_bn, out):
    """Both runs overlaid: BN's faster convergence at a glance."""
    model = with_bn["model"]
    return plot_comparison([without_bn, with_bn], out / f"{model}_bn_vs_no_bn.png",
                           f"{model}: with and without Batch Normalization")


def plot_norms(histories, out):
    """Every normalization a model has runs of, overlaid (in NORM_COLORS' order)."""
    histories = sorted(histories, key=lambda history: list(NORM_COLORS).index(history["norm"]))
    model = histories[0]["model"]
    return plot_comparison(histories, out / f"{model}_norms.png",
                           f"{model}: every normalization it was trained with")


def plot_activation(with_bn, without_bn, out):
    """BN paper Fig. 1: the distribution of one hidden unit's input over training, without and
    with BN.

    with_bn, without_bn: (history, activation) of the two runs, activation as in activation.json.
    """
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.8), sharey=True)
    for ax, (history, act) in zip(axes, (without_bn, with_bn)):
        for key, style in (("p85", ":"), ("p50", "-"), ("p15", "--")):
            ax.plot(act["iter"], act[key], style, color=NORM_COLORS[history["norm"]],
                    label=f"{key[1:]}th percentile")
        ax.set_title(case_name(history))
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    model = with_bn[0]["model"]
    axes[0].set_ylabel(f"input of first ReLU, unit {with_bn[1]['unit']}")
    fig.suptitle(f"{model}: how one first-layer unit's input distribution moves during training")
    return save_figure(fig, out / f"{model}_activation.png")


# ----------------------------------------------------------------------------- table

def converge_iteration(history, threshold):
    """The first iteration whose windowed train accuracy reaches `threshold`, or None."""
    train = history["train"]
    return next((it for it, acc in zip(train["iter"], train["acc"]) if acc >= threshold), None)


def comparison_table(histories):
    """Markdown in the shape of the report's Tables 3.1/3.2, one row per run."""
    rows = ["| Case | Iterations to 90% train acc | to 98% | Final test acc | Best test acc "
            "| Final test loss | Training time | #(parameters) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for history in histories:
        speeds = [converge_iteration(history, t) for t in (0.90, 0.98)]
        rows.append("| " + " | ".join([
            case_name(history),
            *("never" if s is None else f"{s:,}" for s in speeds),
            f"{history['test']['acc'][-1]:.4f}",
            f"{history['best_test_acc']:.4f}",
            f"{history['test']['loss'][-1]:.4f}",
            registry.format_time(history["train_time_s"]),
            f"{history['params']:,}",
        ]) + " |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- from a checkpoint

@torch.inference_mode()
def predictions(run_dir, history, test_x):
    """Softmax outputs of the saved model on the test set (the scripts' own build_model)."""
    model = registry.model_script(history["model"]).build_model(history["norm"])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    batches = test_x.split(solver.EVAL_BATCH_SIZE)
    return torch.cat([model(batch).softmax(dim=1) for batch in batches])


def plot_confusion_and_mistakes(run_dir, history, test_x, test_y, out, n_mistakes=24):
    probs = predictions(run_dir, history, test_x)
    confidence, predicted = probs.max(dim=1)
    label = run_label(history)

    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((test_y, predicted), torch.ones_like(test_y), accumulate=True)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # log: the diagonal would drown the errors
    image = ax.imshow(confusion.float().log1p().numpy(), cmap="Blues")
    for true in range(10):
        for pred in range(10):
            count = confusion[true, pred].item()
            if count:
                ax.text(pred, true, str(count), ha="center", va="center", fontsize=8.5,
                        color="white" if true == pred else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = confusion.diag().sum().item() / len(test_y)
    ax.set_title(f"{case_name(history)}: confusion matrix (accuracy {accuracy:.4f})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    confusion_path = save_figure(fig, out / f"{label}_confusion.png")

    wrong = (predicted != test_y).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:n_mistakes]
    columns = 6
    rows = max(1, math.ceil(len(worst) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.55, 1.85 * rows), squeeze=False)
    for ax in axes.flatten():
        ax.axis("off")
    for ax, index in zip(axes.flatten(), worst.tolist()):
        pixels = test_x[index, 0] * solver.MNIST_STD + solver.MNIST_MEAN   # undo the normalisation
        ax.imshow(pixels.numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {test_y[index]}, pred {predicted[index]}\n"
                     f"{confidence[index]:.0%} sure", fontsize=9)
    fig.suptitle(f"{case_name(history)}: the {len(worst)} most confident mistakes of "
                 f"{len(wrong)}")
    return [confusion_path, save_figure(fig, out / f"{label}_mistakes.png")]


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="*",
                        help="run folders (default: every folder under runs/ with a history.json)")
    parser.add_argument("--figures", "--out", dest="figures", default="runs/figures",
                        help="where the PNGs and table.md go (--out: the same, its older name); "
                             "the committed record is `--figures figures`")
    parser.add_argument("--data-dir", default="data",
                        help="MNIST for the confusion matrix and mistakes")
    args = parser.parse_args(argv)

    run_dirs = args.runs or sorted(p.parent for p in Path("runs").glob("*/history.json"))
    if not run_dirs:
        sys.exit("error: no runs found under runs/; train one first (python cnn.py --bn) or "
                 "name run folders")
    runs = load_runs(run_dirs)
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)

    written = []
    for _, history in runs:
        written += plot_run(history, out)
    by_model = {}   # model -> norm -> (history, activation)
    for run_dir, history in runs:
        by_model.setdefault(history["model"], {})[history["norm"]] = (
            history, load_activation(run_dir))
    for norms in by_model.values():
        if set(norms) - {"bn", "none"}:   # another normalization too: all of them in one figure
            written.append(plot_norms([history for history, _ in norms.values()], out))
        if "bn" in norms and "none" in norms:
            (bn_history, bn_activation), (plain_history, plain_activation) = (
                norms["bn"], norms["none"])
            written.append(plot_bn_comparison(bn_history, plain_history, out))
            if bn_activation and plain_activation:
                written.append(plot_activation(norms["bn"], norms["none"], out))
            else:
                print(f"skipping {bn_history['model']}_activation.png: a run of it has no "
                      "readable activation.json", file=sys.stderr)

    try:
        _, _, test_x, test_y = solver.load_mnist(args.data_dir, torch.device("cpu"))
    except plumbing.SolverError as error:
        print(f"skipping the confusion matrices and mistakes: {error}", file=sys.stderr)
    else:
        for run_dir, history in runs:
            if (run_dir / "checkpoint.pt").exists():
                try:
                    written += plot_confusion_and_mistakes(run_dir, history, test_x, test_y, out)
                except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
                    print(f"skipping {run_label(history)}'s confusion matrix and mistakes: "
                          f"{run_dir / 'checkpoint.pt'} cannot be used "
                          f"({type(error).__name__})", file=sys.stderr)

    table = comparison_table([history for _, history in runs])
    (out / "table.md").write_text(table)
    written.append(out / "table.md")
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
