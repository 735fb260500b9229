"""The momentum convention mix-up: the report's running-average momentum 0.9 (torch's 0.1)
against 0.1 in the report's convention (torch's 0.9), at batch 100 and batch 8. Both arms train
identically (the momentum only sets the running estimates, which training never uses): they
differ only in the estimates that evaluation uses, so their gap is paired step by step."""
import matplotlib.pyplot as plt
import torch

import batchnorm
import mlp
from studies.common import accuracy, print_table, provenance

FIGURES = ("momentum_convention.png",)
COLORS = {0.9: "tab:blue", 0.1: "tab:red"}


def train_arm(study, size, momentum, seed, last):
    """One run with every BN layer's running-average momentum set; records the last `last`
    steps: eval-mode test accuracy, the first BN layer's batch mean and running mean (unit 0)."""
    record = {"step": [], "test_acc": [], "running_mean": [], "batch_mean": []}
    config = study.config(batch_size=size, learning_rate=0.1 * size / 100, disp_freq=1)
    total_steps = len(study.data[0]) // size
    _, _, test_x, test_y = study.data
    model = study.model(lambda: mlp.build_model("bn"), seed)
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
    history, _ = study.fit(model, config, on_window=on_window, seed=seed)
    return record, history["train"]["loss"]


def run(study):
    sizes = [100, 8]
    last = 20 if study.quick else 200
    results = {"provenance": provenance(study.seeds), "last_steps": last, "runs": [],
               "paired": []}
    for size in sizes:
        for seed in study.seeds:
            by_momentum, losses = {}, {}
            for momentum in (0.9, 0.1):
                record, losses[momentum] = train_arm(study, size, momentum, seed, last)
                by_momentum[momentum] = record
                results["runs"].append(dict(record, batch=size, momentum=momentum, seed=seed))
            high, low = by_momentum[0.9]["test_acc"], by_momentum[0.1]["test_acc"]
            gaps = [a - b for a, b in zip(high, low)]
            results["paired"].append({
                "batch": size, "seed": seed,
                "trained_identically": losses[0.9] == losses[0.1],   # every window's loss
                "mean_gap": sum(gaps) / len(gaps),                  # 0.9 minus 0.1
                "share_09_wins": sum(g > 0 for g in gaps) / len(gaps),
                "share_ties": sum(g == 0 for g in gaps) / len(gaps)})
            pair = results["paired"][-1]
            study.progress("momentum", f"batch {size}, seed {seed}",
                           f"0.9 - 0.1: {pair['mean_gap']:+.2%} on average, 0.9 wins "
                           f"{pair['share_09_wins']:.0%} of {last} steps")

    print_table(["batch", "seed", "trained identically", "mean gap (0.9 - 0.1)",
                 "0.9 wins", "ties", "running mean std, 0.9 / 0.1"],
                [(p["batch"], p["seed"], p["trained_identically"], f"{p['mean_gap']:+.2%}",
                  f"{p['share_09_wins']:.0%}", f"{p['share_ties']:.0%}",
                  " / ".join(f"{torch.tensor(r['running_mean']).std().item():.3f}"
                             for r in results["runs"] if r["batch"] == p["batch"]
                             and r["seed"] == p["seed"]))
                 for p in results["paired"]])
    study.save("momentum", results, draw(results), FIGURES[0])


def draw(results):
    """The figure from momentum.json's numbers (also `experiments.py momentum --redraw`)."""
    sizes = sorted({r["batch"] for r in results["runs"]}, reverse=True)
    last, first_seed = results["last_steps"], results["provenance"]["seeds"][0]
    fig, axes = plt.subplots(2, len(sizes), figsize=(12, 6.5), squeeze=False)
    for column, size in enumerate(sizes):
        for run_ in [r for r in results["runs"] if r["batch"] == size and r["seed"] == first_seed]:
            label = f"momentum {run_['momentum']} (torch: {1 - run_['momentum']:.1f})"
            color = COLORS[run_["momentum"]]
            axes[0][column].plot(run_["step"], run_["test_acc"], color=color, label=label)
            axes[1][column].plot(run_["step"], run_["running_mean"], color=color,
                                 label=f"running mean, {label}")
            if run_["momentum"] == 0.9:   # the same batches in both arms: drawn once
                axes[1][column].plot(run_["step"], run_["batch_mean"], ".", color="tab:gray",
                                     ms=3, label="batch means (the same in both arms)")
        axes[0][column].set(title=f"batch {size}: eval-mode test accuracy, last {last} steps, "
                                  f"seed {first_seed}", ylabel="test accuracy")
        axes[1][column].set(title=f"batch {size}: first BN layer, unit 0", xlabel="training step",
                            ylabel="mean of its input")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("The same training, two momenta for the running estimates")
    return fig
