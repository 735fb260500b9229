"""BN before or after the ReLU, the most asked BN question: the MLP and the CNN with BN in each
place, the studies' short budget (3 epochs at the report's constant rate 0.1)."""
import matplotlib.pyplot as plt
from torch import nn

import cnn
import mlp
from batchnorm import BatchNorm1d, BatchNorm2d
from studies.common import draw_over_seeds, print_table, provenance, show_seeds

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


def run(study):
    epochs = 1 if study.quick else 3
    config = study.config(max_epoch=epochs)
    results = {"provenance": provenance(study.seeds), "epochs": epochs,
               "rule": f"SGD lr 0.1 constant, momentum 0.9, weight decay 1e-4, batch 100, "
                       f"{epochs} epochs", "models": {}}
    for name, builders in BUILDERS.items():
        results["models"][name] = {}
        for place, build in builders.items():
            arm = {"test_acc": [], "outcome": [], "test_acc_per_epoch": [], "train_iter": None,
                   "train_loss": []}
            for seed in study.seeds:
                model = study.model(build, seed)
                history, label, acc = study.train(model, config, seed)
                arm["test_acc"].append(acc)
                arm["outcome"].append(label)
                arm["test_acc_per_epoch"].append(history["test"]["acc"])
                arm["train_iter"] = history["train"]["iter"]
                arm["train_loss"].append(history["train"]["loss"])
            results["models"][name][place] = arm
            study.progress("placement", f"{name}, BN {place} the ReLU",
                           show_seeds(arm["test_acc"]))
        before, after = (results["models"][name][p]["test_acc"] for p in ("before", "after"))
        if None not in before + after:   # paired by seed: the same data order in both arms
            results["models"][name]["after_minus_before"] = [a - b for a, b in zip(after, before)]

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for column, (name, arms) in enumerate(results["models"].items()):
        for place in ("before", "after"):
            arm = arms[place]
            label = f"BN {place} the ReLU"
            losses = list(zip(*arm["train_loss"]))   # per window: the seeds' losses
            axes[0][column].plot(arm["train_iter"][:len(losses)],
                                 [sum(w) / len(w) for w in losses], color=COLORS[place], lw=0.8,
                                 label=label)
            epochs_run = list(range(1, len(arm["test_acc_per_epoch"][0]) + 1))
            per_epoch = [list(accs) for accs in zip(*arm["test_acc_per_epoch"])]
            draw_over_seeds(axes[1][column], epochs_run, per_epoch,
                            [["ok"] * len(accs) for accs in per_epoch], COLORS[place], label)
        axes[0][column].set(title=f"{name.upper()}: training loss (50-step windows, mean "
                                  "over seeds)", xlabel="iteration", ylabel="train loss",
                            yscale="log")
        axes[1][column].set(title=f"{name.upper()}: test accuracy after each epoch",
                            xlabel="epoch", ylabel="test accuracy")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("BN before or after the ReLU (band: range over seeds)")
    print_table(["model", "BN before ReLU", "BN after ReLU", "after - before, per seed"],
                [(name, show_seeds(arms["before"]["test_acc"]),
                  show_seeds(arms["after"]["test_acc"]),
                  " ".join(f"{d:+.2%}" for d in arms.get("after_minus_before", [])))
                 for name, arms in results["models"].items()])
    study.save("placement", results, fig, FIGURES[0])

