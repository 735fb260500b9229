"""Running estimates against population statistics: evaluation with the momentum averages of
training against the BN paper's Algorithm 2 (`batchnorm.recalibrate`): the MLP and the CNN
after each of 5 epochs at batch 100, and the MLP after one epoch at batches of 2, 4 and 8,
where the estimates lag most."""
import copy

import matplotlib.pyplot as plt

import batchnorm
import cnn
import mlp
import solver
from studies.common import first_images, markdown_table, show_seeds

NAME = "population"
QUESTION = "momentum running estimates against population statistics"
FIGURES = ("population_statistics.png",)
SCRIPTS = {"mlp": mlp, "cnn": cnn}
SMALL_BATCHES = [2, 4, 8]
COMPARED = ("running_acc", "population_acc", "gaps")   # what compare() returns, in order


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


def compare(model, train_x, test_x, test_y, batch_size):
    """(running acc, population acc, gaps): the model as trained, and a recalibrated copy from
    the whole training set in batches of the training batch size."""
    population = copy.deepcopy(model)
    batchnorm.recalibrate(population, train_x[: len(train_x) // batch_size * batch_size]
                          .split(batch_size))
    return (solver.evaluate(model, test_x, test_y)[1],
            solver.evaluate(population, test_x, test_y)[1],
            estimate_gaps(batchnorm.batchnorm_layers(model),
                          batchnorm.batchnorm_layers(population)))


def epochs_of(study):
    return 1 if study.quick else 5


def data_of(study):
    """study.data; quick: its first 100 training and 100 test images."""
    return first_images(study.data, 100, 100) if study.quick else study.data


def trainings(study):
    """The MLP and the CNN at batch 100, compared after each epoch; then the MLP at each small
    batch, compared after one epoch."""
    return ([{"network": name, "batch": 100, "seed": seed}
             for name in SCRIPTS for seed in study.seeds]
            + [{"network": "mlp", "batch": size, "seed": seed}
               for size in SMALL_BATCHES for seed in study.seeds])


def train_one(study, job):
    """{"running_acc", "population_acc", "gaps"}: lists over epochs at batch 100; at a small
    batch (one epoch, the rate scaled with the batch as in `batch`), the one comparison."""
    name, size = job["network"], job["batch"]
    data = data_of(study)
    train_x, _, test_x, test_y = data
    model = study.model(lambda: SCRIPTS[name].build_model("bn"), job["seed"])
    if size in SMALL_BATCHES:
        config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                              disp_freq=max(1, 5000 // size))
        study.fit(model, config, data=data, seed=job["seed"])
        return dict(zip(COMPARED, compare(model, train_x, test_x, test_y, size)))
    per_epoch = {key: [] for key in COMPARED}

    def on_epoch(epoch, lr):
        for key, value in zip(COMPARED, compare(model, train_x, test_x, test_y, size)):
            per_epoch[key].append(value)

    study.fit(model, study.config(max_epoch=epochs_of(study)), on_epoch=on_epoch, data=data,
              seed=job["seed"])
    return per_epoch


def assemble(study, jobs, results):
    epochs = epochs_of(study)
    models = {name: {"epoch": list(range(1, epochs + 1)), **{key: [] for key in COMPARED}}
              for name in SCRIPTS}
    small = {"batch": SMALL_BATCHES, **{key: [[] for _ in SMALL_BATCHES] for key in COMPARED}}
    for job, result in zip(jobs, results):
        for key in COMPARED:
            if job["batch"] in SMALL_BATCHES:
                small[key][SMALL_BATCHES.index(job["batch"])].append(result[key])
            else:
                models[job["network"]][key].append(result[key])
    return {"epochs": epochs, "models": models, "small_batches": {"mlp": small}}


def table(results):
    small = results["small_batches"]["mlp"]
    largest = lambda pops, runs: f"{max(abs(p - r) for p, r in zip(pops, runs)):.2%}"
    rows = [(name, f"epoch {e}", show_seeds([r[i] for r in rec["running_acc"]]),
             show_seeds([p[i] for p in rec["population_acc"]]),
             largest([p[i] for p in rec["population_acc"]], [r[i] for r in rec["running_acc"]]))
            for name, rec in results["models"].items() for i, e in enumerate(rec["epoch"])]
    rows += [("mlp", f"batch {size}", show_seeds(small["running_acc"][i]),
              show_seeds(small["population_acc"][i]),
              largest(small["population_acc"][i], small["running_acc"][i]))
             for i, size in enumerate(small["batch"])]
    return markdown_table(["model", "when", "test acc, running", "test acc, population",
                           "largest |difference| over seeds"], rows)


def draw(results):
    """The figure from population.json's numbers (also `experiments.py population --redraw`)."""
    small = results["small_batches"]["mlp"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    styles = {"mlp": "tab:blue", "cnn": "tab:purple"}
    for name, record in results["models"].items():
        differences = [[p - r for p, r in zip(pops, runs)]
                       for pops, runs in zip(record["population_acc"], record["running_acc"])]
        for seed_diff in differences:
            axes[0].plot(record["epoch"], seed_diff, "o-", color=styles[name], alpha=0.6,
                         label=f"{name}, batch 100" if seed_diff is differences[0] else None)
        for layer in range(len(record["gaps"][0][0])):
            for quantity, axis in (("var", axes[1]), ("mean", axes[2])):
                for s, gaps in enumerate(record["gaps"]):
                    axis.plot(record["epoch"], [g[layer][quantity] for g in gaps],
                              "o-" if layer == 0 else "s--", color=styles[name], alpha=0.8,
                              label=f"{name} BN {layer + 1}" if s == 0 else None)
    for i, size in enumerate(small["batch"]):
        diffs = [p - r for p, r in zip(small["population_acc"][i], small["running_acc"][i])]
        axes[0].scatter([0.4 + 0.2 * i] * len(diffs), diffs, marker="s", color="tab:red",
                        label="mlp, one epoch at batch 2, 4, 8 (left to right)" if i == 0 else None)
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].set(xlabel="epoch (the squares: one epoch at a small batch)",
                ylabel="population minus running (test accuracy)",
                title="accuracy: population statistics - running estimates")
    axes[1].set(xlabel="epoch", ylabel="mean |running / population - 1|", yscale="log",
                title="variance estimates, relative gap (batch 100)")
    axes[2].set(xlabel="epoch", ylabel="mean |running - population| / std", yscale="log",
                title="mean estimates, gap in std units (batch 100)")
    for ax in axes:
        ax.set_xticks(range(1, results["epochs"] + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Momentum estimates against population statistics (each line or square: a seed)")
    return [fig]
