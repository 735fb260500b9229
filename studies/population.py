"""Running estimates against population statistics: evaluation with the momentum averages of
training against the BN paper's Algorithm 2 (`batchnorm.recalibrate`): the MLP and the CNN
after each of 5 epochs at batch 100, and the MLP after one epoch at batches of 2, 4 and 8,
where the estimates lag most."""
import copy

import batchnorm
import cnn
import mlp
import plot
import solver
from studies.common import (compare, draw_failures, draw_over_seeds, failure_rows,
                            first_images, markdown_table, outcome, panel_grid, seeds_cell)

NAME = "population"
QUESTION = "momentum running estimates against population statistics"
FIGURES = ("population_statistics.png",)
SCRIPTS = {"mlp": mlp, "cnn": cnn}
SMALL_BATCHES = [2, 4, 8]
COMPARED = ("running_acc", "population_acc", "gaps")   # what evaluate_both() returns, in order
VERDICTS = ("outcome", "population_outcome")   # the failure rule, as trained and recalibrated


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


def recalibrated(model, train_x, batch_size):
    """A copy of the model with population statistics from the whole training set in batches
    of the training batch size (the BN paper's Algorithm 2)."""
    population = copy.deepcopy(model)
    batchnorm.recalibrate(population, train_x[: len(train_x) // batch_size * batch_size]
                          .split(batch_size))
    return population


def evaluate_both(model, population, test_x, test_y):
    """(running acc, population acc, gaps): the model as trained, and its recalibrated copy."""
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
    """{"running_acc", "population_acc", "gaps"}: lists over epochs at batch 100 (taken as each
    epoch's last window closes); at a small batch (one epoch, the rate scaled with the batch as
    in `batch`), the one comparison. Under the failure rule (Study.train): "outcome", the run
    as trained (its running estimates), and "population_outcome", its recalibrated copy at the
    end (the rule on the copy, with the run's last training loss). A diverged run has no
    numbers after its last finished epoch (None)."""
    name, size = job["network"], job["batch"]
    data = data_of(study)
    train_x, _, test_x, test_y = data
    model = study.model(lambda: SCRIPTS[name].build_model("bn"), job["seed"])
    small = size in SMALL_BATCHES
    if small:
        config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                              disp_freq=max(1, 5000 // size))
    else:
        config = study.config(max_epoch=epochs_of(study))
    steps_per_epoch = len(train_x) // config["batch_size"]
    per_epoch = {key: [] for key in COMPARED}
    last = {}

    def on_window(iteration, model):   # at an epoch's end, as solver.train's on_epoch would be
        if not small and iteration % steps_per_epoch == 0:
            last["population"] = recalibrated(model, train_x, size)
            for key, value in zip(COMPARED, evaluate_both(model, last["population"], test_x,
                                                          test_y)):
                per_epoch[key].append(value)

    history, verdict, _ = study.train(model, config, job["seed"], on_window=on_window,
                                      data=data)
    if verdict == "diverged":
        result = {key: None for key in COMPARED} if small else {
            key: values + [None] * (config["max_epoch"] - len(values))
            for key, values in per_epoch.items()}
        return {**result, "outcome": verdict, "population_outcome": verdict}
    if small:
        last["population"] = recalibrated(model, train_x, size)
        result = dict(zip(COMPARED, evaluate_both(model, last["population"], test_x, test_y)))
    else:
        result = per_epoch
    population_verdict = outcome(last["population"], test_x, test_y,
                                 history["train"]["loss"][-1])[0]
    return {**result, "outcome": verdict, "population_outcome": population_verdict}


def assemble(study, jobs, results):
    """Per network at batch 100, and per small batch, every number and verdict as a list over
    seeds (at batch 100 each number per seed a list over epochs)."""
    epochs = epochs_of(study)
    models = {name: {"epoch": list(range(1, epochs + 1)),
                     **{key: [] for key in COMPARED + VERDICTS}} for name in SCRIPTS}
    small = {"batch": SMALL_BATCHES,
             **{key: [[] for _ in SMALL_BATCHES] for key in COMPARED + VERDICTS}}
    for job, result in zip(jobs, results):
        for key in COMPARED + VERDICTS:
            if job["batch"] in SMALL_BATCHES:
                small[key][SMALL_BATCHES.index(job["batch"])].append(result[key])
            else:
                models[job["network"]][key].append(result[key])
    return {"epochs": epochs, "models": models, "small_batches": {"mlp": small}}


def table(results):
    """Per network and epoch at batch 100, and per small batch: test accuracy with the running
    estimates and with population statistics over the ok seeds (each under its own verdict,
    the others counted), and the effect rule on population - running (paired by seed)."""
    def row(name, when, running, population, verdicts, population_verdicts):
        return (name, when, seeds_cell(running, verdicts),
                seeds_cell(population, population_verdicts),
                compare(running, population, verdicts, population_verdicts)[1])

    small = results["small_batches"]["mlp"]
    rows = [row(name, f"epoch {e}", [r[i] for r in rec["running_acc"]],
                [p[i] for p in rec["population_acc"]], rec["outcome"], rec["population_outcome"])
            for name, rec in results["models"].items() for i, e in enumerate(rec["epoch"])]
    rows += [row("mlp", f"batch {size}", small["running_acc"][i], small["population_acc"][i],
                 small["outcome"][i], small["population_outcome"][i])
             for i, size in enumerate(small["batch"])]
    return markdown_table(["model", "when", "test acc, running", "test acc, population",
                           "population - running"], rows)


def draw_seed(ax, xs, ys, verdict, marked, name, **style):
    """One seed's line: solid where its run is ok; dotted, ending in its marker (v failed,
    x diverged), where not (never part of a mean); in the legend once per `name` and kind on
    each axis (`marked`: those already there)."""
    points = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if not points:
        return
    first = (ax, name, verdict) not in marked
    marked.add((ax, name, verdict))
    if verdict == "ok":
        ax.plot(*zip(*points), **style, label=name if first else None)
        return
    ax.plot(*zip(*points), **{**style, "ls": ":", "marker": None})
    ax.plot(*points[-1], "v" if verdict == "failed" else "x", color=style["color"], ms=8,
            ls="none", label=f"{name}: a {verdict} run" if first else None)


def draw(results):
    """The figure from population.json's numbers (also `experiments.py population --redraw`):
    (a) the accuracy gap in points per seed over the epochs at batch 100, (b) the same after one
    epoch at the small batches, against the batch size, (c, d) the estimates' gaps per layer.
    Each seed a line of its own; one whose run or recalibrated copy failed or diverged dotted
    and marked (v, x), never part of a mean."""
    small = results["small_batches"]["mlp"]
    small_verdicts = [[a if a != "ok" else b for a, b in zip(run, recalibrated)]
                      for run, recalibrated in zip(small["outcome"], small["population_outcome"])]
    failures = [("mlp", "tab:red", small["batch"], small_verdicts)]
    fig, panels = panel_grid(4, [None, len(failure_rows(failures))], height=3.2, extra=0.6)
    axes = [ax for ax, _ in panels]
    styles = {"mlp": "tab:blue", "cnn": "tab:purple"}
    marked = set()
    for name, record in results["models"].items():
        verdicts = [a if a != "ok" else b
                    for a, b in zip(record["outcome"], record["population_outcome"])]
        for s, (pops, runs) in enumerate(zip(record["population_acc"], record["running_acc"])):
            draw_seed(axes[0], record["epoch"],
                      [None if None in (p, r) else 100 * (p - r) for p, r in zip(pops, runs)],
                      verdicts[s], marked, f"{name}, batch 100", color=styles[name],
                      alpha=0.6, marker="o")
        layers = max((len(g) for gaps in record["gaps"] for g in gaps if g), default=0)
        for layer in range(layers):
            for quantity, axis in (("var", axes[2]), ("mean", axes[3])):
                for s, gaps in enumerate(record["gaps"]):
                    draw_seed(axis, record["epoch"],
                              [g[layer][quantity] if g else None for g in gaps],
                              record["outcome"][s], marked, f"{name} BN {layer + 1}",
                              color=styles[name], alpha=0.8,
                              marker="o" if layer == 0 else "s",
                              ls="-" if layer == 0 else "--")
    gaps = [[None if None in (p, r) else 100 * (p - r) for p, r in zip(pops, runs)]
            for pops, runs in zip(small["population_acc"], small["running_acc"])]
    draw_over_seeds(axes[1], small["batch"], gaps, small_verdicts, "tab:red", "mlp, one epoch",
                    fmt="s-")
    draw_failures(panels[1][1], failures)
    panels[1][1].set_xlabel("batch size (one epoch)")
    for ax in axes[:2]:
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel("population - running (points)")
    axes[0].set(xlabel="epoch", title="(a) test accuracy: population - running, batch 100")
    axes[1].set(xscale="log", title="(b) the same, one epoch at a small batch")
    axes[1].set_xticks(small["batch"], [str(b) for b in small["batch"]])
    axes[1].minorticks_off()
    axes[2].set(xlabel="epoch", ylabel="mean |running / population - 1|",
                title="(c) variance estimates, relative gap (batch 100)")
    axes[3].set(xlabel="epoch", ylabel="mean |running - population| / std",
                title="(d) mean estimates, gap in std units (batch 100)")
    plot.log_axis(axes[2])
    plot.log_axis(axes[3])
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_xticks(range(1, results["epochs"] + 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5, loc="best")
    fig.suptitle("Momentum estimates against population statistics\na line: a seed (v, x: its "
                 "end where it failed or diverged); (b): the ok seeds' mean and range")
    return [fig]
