"""BN before or after the ReLU, the most asked BN question: the MLP and the CNN with BN in each
place, the studies' short budget (3 epochs at the report's constant rate 0.1)."""
from torch import nn

import cnn
import mlp
import plot
from batchnorm import BatchNorm1d, BatchNorm2d
from studies.common import (compare, first_images, markdown_table, panel_grid, percent_axis,
                            seeds_cell)
from studies.why_bn import draw_band

NAME = "placement"
QUESTION = "BN before or after the ReLU"
FIGURES = ("bn_placement.png",)
COLORS = {"before": "tab:blue", "after": "tab:green"}


def mlp_bn_after_relu():
    """mlp.py's network with BN after each ReLU: linear -> ReLU -> BN. The linear layer keeps a
    bias here: no BN follows it directly, so nothing would take the bias's place."""
    def hidden(n_in, n_out):
        return [nn.Linear(n_in, n_out), nn.ReLU(), BatchNorm1d(n_out)]
    return nn.Sequential(nn.Flatten(), *hidden(784, 128), *hidden(128, 64),
                         nn.Linear(64, 10, bias=False))


def cnn_bn_after_relu():
    """cnn.py's network with BN after each ReLU (before the pooling): conv -> ReLU -> BN."""
    def conv_block(n_in, n_out):
        return [nn.Conv2d(n_in, n_out, kernel_size=3, padding=1), nn.ReLU(), BatchNorm2d(n_out),
                nn.MaxPool2d(2)]
    return nn.Sequential(*conv_block(1, 4), *conv_block(4, 4), nn.Flatten(),
                         nn.Linear(4 * 7 * 7, 10))


BUILDERS = {  # model -> placement -> network; "before" is the scripts' own (the BN paper's)
    "mlp": {"before": lambda: mlp.build_model("bn"), "after": mlp_bn_after_relu},
    "cnn": {"before": lambda: cnn.build_model("bn"), "after": cnn_bn_after_relu}}


def settings(study):
    """(epochs, data): quick: one pass over 300 training images, 200 test images."""
    if study.quick:
        return 1, first_images(study.data, 300, 200)
    return 3, study.data


def trainings(study):
    """Each model with BN before and after the ReLU, at every seed."""
    return [{"network": name, "arm": place, "seed": seed}
            for name, builders in BUILDERS.items() for place in builders
            for seed in study.seeds]


def train_one(study, job):
    """One network for the study's epochs at the report's recipe (constant rate 0.1)."""
    epochs, data = settings(study)
    model = study.model(BUILDERS[job["network"]][job["arm"]], job["seed"])
    history, verdict, acc = study.train(model, study.config(max_epoch=epochs), job["seed"],
                                        data=data)
    return {"test_acc": acc, "outcome": verdict, "test_acc_per_epoch": history["test"]["acc"],
            "train_iter": history["train"]["iter"], "train_loss": history["train"]["loss"]}


def assemble(study, jobs, results):
    """Per model and placement, each number as a list over seeds; after_minus_before pairs the
    two placements by seed (the same batch order in both) where neither diverged."""
    n = settings(study)[0]
    models = {name: {place: {"test_acc": [], "outcome": [], "test_acc_per_epoch": [],
                             "train_iter": None, "train_loss": []} for place in builders}
              for name, builders in BUILDERS.items()}
    for job, result in zip(jobs, results):
        arm = models[job["network"]][job["arm"]]
        for key in ("test_acc", "outcome", "test_acc_per_epoch", "train_loss"):
            arm[key].append(result[key])
        arm["train_iter"] = result["train_iter"]
    for arms in models.values():
        before, after = arms["before"]["test_acc"], arms["after"]["test_acc"]
        if None not in before + after:
            arms["after_minus_before"] = [a - b for a, b in zip(after, before)]
    return {"epochs": n, "rule": f"SGD lr 0.1 constant, momentum 0.9, weight decay 1e-4, "
                                 f"batch 100, {n} epochs", "models": models}


def table(results):
    """Per model, each placement's test accuracy over its ok seeds (the others counted) and the
    effect rule on after against before (paired by seed: the same batch order in both)."""
    return markdown_table(
        ["model", "BN before ReLU", "BN after ReLU", "after - before"],
        [(name, seeds_cell(before["test_acc"], before["outcome"]),
          seeds_cell(after["test_acc"], after["outcome"]),
          compare(before["test_acc"], after["test_acc"], before["outcome"],
                  after["outcome"])[1])
         for name, arms in results["models"].items()
         for before, after in [(arms["before"], arms["after"])]])


def draw(results):
    """The figure from placement.json's numbers (also `experiments.py placement --redraw`):
    means and ranges over the ok seeds, each failed or diverged run on its own."""
    fig, panels = panel_grid(4, height=3.0, extra=0.6)
    axes = [[ax for ax, _ in panels[:2]], [ax for ax, _ in panels[2:]]]
    for column, (name, arms) in enumerate(results["models"].items()):
        for place in ("before", "after"):
            arm, label = arms[place], f"BN {place} the ReLU"
            seeds = len(arm["outcome"])
            draw_band(axes[0][column], [arm["train_iter"]] * seeds, arm["train_loss"],
                      COLORS[place], label, outcomes=arm["outcome"])
            draw_band(axes[1][column],
                      [list(range(1, len(accs) + 1)) for accs in arm["test_acc_per_epoch"]],
                      arm["test_acc_per_epoch"], COLORS[place], label, style="o-",
                      outcomes=arm["outcome"])
        axes[0][column].set(title=f"{name.upper()}: training loss (50-step windows)",
                            xlabel="iteration", ylabel="train loss")
        plot.log_axis(axes[0][column])
        axes[1][column].set(title=f"{name.upper()}: test accuracy after each epoch",
                            xlabel="epoch", ylabel="test accuracy",
                            xticks=range(1, results["epochs"] + 1))
        percent_axis(axes[1][column])
        for ax in (axes[0][column], axes[1][column]):
            ax.grid(alpha=0.3)
    axes[0][0].legend()   # the same two arms in every panel
    fig.suptitle("BN before or after the ReLU\nline: mean over the ok seeds, band: their range")
    return [fig]
