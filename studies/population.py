"""Running estimates against population statistics: evaluation with the momentum averages of
training against the BN paper's Algorithm 2 (`batchnorm.recalibrate`), on the MLP and the CNN."""
import copy

import matplotlib.pyplot as plt

import batchnorm
import cnn
import mlp
import solver
from studies.common import accuracy, print_table

FIGURES = ("population_statistics.png",)


def estimate_gaps(running, population):
    """How far the momentum estimates lie from the population's, per layer, averaged over
    channels. Means are compared in units of the population's standard deviation; variances
    as a ratio."""
    gaps = []
    for ours, pop in zip(running, population):
        std = pop.running_var.sqrt()
        gaps.append({"mean": ((ours.running_mean - pop.running_mean).abs() / std).mean().item(),
                     "var": (ours.running_var / pop.running_var - 1).abs().mean().item()})
    return gaps


def run(study):
    """The report's plain recipe (constant rate 0.1) for a few epochs: eval with the momentum
    estimates against the recalibrated population statistics (BN paper, Algorithm 2)."""
    epochs = 1 if study.quick else 5
    train_x, _, test_x, test_y = study.data
    results = {"epochs": epochs, "models": {}}
    for name, script in (("mlp", mlp), ("cnn", cnn)):
        record = {"epoch": [], "running_acc": [], "population_acc": [], "gaps": []}

        model = study.model(lambda: script.build_model("bn"))

        def on_epoch(epoch, lr):
            population = copy.deepcopy(model)
            batches = train_x[: len(train_x) // 100 * 100].split(100)   # all of it, batches of 100
            batchnorm.recalibrate(population, batches)
            record["epoch"].append(epoch)
            record["running_acc"].append(accuracy(model, test_x, test_y))
            record["population_acc"].append(solver.evaluate(population, test_x, test_y)[1])
            record["gaps"].append(estimate_gaps(batchnorm.batchnorm_layers(model),
                                                batchnorm.batchnorm_layers(population)))

        # the same recipe for both models
        study.fit(model, study.config(max_epoch=epochs), on_epoch=on_epoch)
        results["models"][name] = record
        study.progress("population", f"{name} with BN, {epochs} epochs, constant lr 0.1",
                       f"running {record['running_acc'][-1]:.2%}, "
                       f"population {record['population_acc'][-1]:.2%}")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (name, record), color in zip(results["models"].items(), ("tab:blue", "tab:purple")):
        axes[0].plot(record["epoch"], record["running_acc"], "o-", color=color,
                     label=f"{name}: running estimates")
        axes[0].plot(record["epoch"], record["population_acc"], "s--", color=color,
                     label=f"{name}: population")
        for layer in range(len(record["gaps"][0])):
            axes[1].plot(record["epoch"], [g[layer]["var"] for g in record["gaps"]], "o-",
                         color=color, alpha=1 - 0.4 * layer,
                         label=f"{name} BN {layer + 1}: variance, relative")
            axes[1].plot(record["epoch"], [g[layer]["mean"] for g in record["gaps"]], "s--",
                         color=color, alpha=1 - 0.4 * layer,
                         label=f"{name} BN {layer + 1}: mean, in std units")
    axes[0].set(xlabel="epoch", ylabel="test accuracy",
                title="eval with momentum estimates vs population stats")
    axes[1].set(xlabel="epoch", ylabel="mean |running - population|", yscale="log",
                title="how far the two sets of estimates are apart")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    print_table(["model", "epoch", "test acc, running", "test acc, population",
                 "gap (mean / var), layer 1"],
                [(name, e, f"{r['running_acc'][i]:.4f}", f"{r['population_acc'][i]:.4f}",
                  f"{r['gaps'][i][0]['mean']:.3f} / {r['gaps'][i][0]['var']:.3f}")
                 for name, r in results["models"].items() for i, e in enumerate(r["epoch"])])
    study.save("population", results, fig, FIGURES[0])
