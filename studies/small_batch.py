"""When BN fails, what instead: GroupNorm's Figure 1 at MNIST scale. Test accuracy (eval mode)
against the batch size, from 2 to 128 images, for BN, BN evaluated with population statistics,
Batch Renorm, GroupNorm, LayerNorm and no normalization, on the MLP and the CNN."""
import copy

import batchnorm
import cnn
import mlp
import plot
from studies.common import (compare, draw_failures, draw_over_seeds, failure_rows,
                            figure_legend, first_images, markdown_table, outcome, panel_grid,
                            percent_axis, seeds_cell, strip_note)

NAME = "small_batch"
QUESTION = "BN, Batch Renorm, GroupNorm, LayerNorm at batches 2-128"
FIGURES = ("small_batch.png",)
SCRIPTS = {"mlp": mlp, "cnn": cnn}
SIZES = [2, 4, 8, 16, 32, 128]
IMAGES = 20_000   # every batch size sees the same first 20,000 training images, once
NORMS = ["bn", "brn", "gn", "ln", "none"]   # trained; "bn_population" re-evaluates the BN runs
ARMS = ["bn", "bn_population", "brn", "gn", "ln", "none"]
RULE = ("lr = 0.1 * batch / 100 (the report's 0.1 at batch 100, scaled linearly), constant, "
        "SGD momentum 0.9, weight decay 1e-4; one pass over the first 20,000 training images; "
        "Batch Renorm with r_max 3, d_max 5 from the first step (no warm-up: these runs are "
        "156 to 10,000 steps long, the paper's warm-up 5,000 to 40,000)")


def population_outcome(model, train_x, batch_size, test_x, test_y, train_loss):
    """The BN run evaluated with population statistics (BN paper, Algorithm 2, `recalibrate`)
    from the images it trained on, in batches of its own size; the run itself is untouched."""
    population = copy.deepcopy(model)
    batches = train_x[: len(train_x) // batch_size * batch_size].split(batch_size)
    batchnorm.recalibrate(population, batches)
    return outcome(population, test_x, test_y, train_loss)


def settings(study):
    """(batch sizes, training images, test images; None: all): quick: two sizes on 20 images,
    tested on 100."""
    return ([2, 16], 20, 100) if study.quick else (SIZES, IMAGES, None)


def trainings(study):
    """Both networks, every batch size, each trained normalization, at every seed."""
    return [{"network": name, "batch": size, "norm": norm, "seed": seed}
            for name in SCRIPTS for size in settings(study)[0] for norm in NORMS
            for seed in study.seeds]


def train_one(study, job):
    """One pass over the first images at the job's batch size, lr 0.1 * batch / 100; a BN run
    is also evaluated with population statistics ("population": {"outcome", "test_acc"})."""
    size, (_, images, tests) = job["batch"], settings(study)
    data = first_images(study.data, images, tests)
    config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                          disp_freq=max(1, 5000 // size))
    model = study.model(lambda: SCRIPTS[job["network"]].build_model(job["norm"]), job["seed"])
    history, label, acc = study.train(model, config, job["seed"], data=data)
    result = {"outcome": label, "test_acc": acc}
    if job["norm"] == "bn":   # the same run, evaluated with population statistics
        if label != "diverged":
            label, acc = population_outcome(model, data[0], size, data[2], data[3],
                                            history["train"]["loss"][-1])
        result["population"] = {"outcome": label, "test_acc": acc}
    return result


def assemble(study, jobs, results):
    sizes, images, _ = settings(study)
    models = {name: {arm: {"test_acc": [[] for _ in sizes], "outcome": [[] for _ in sizes]}
                     for arm in ARMS} for name in SCRIPTS}
    for job, result in zip(jobs, results):
        record, at = models[job["network"]], sizes.index(job["batch"])
        arms = [(job["norm"], result)]
        if "population" in result:
            arms.append(("bn_population", result["population"]))
        for arm, measured in arms:
            for key in ("test_acc", "outcome"):
                record[arm][key][at].append(measured[key])
    return {"sizes": sizes, "images": min(images, len(study.data[0])), "rule": RULE,
            "models": models}


def table(results):
    """Two tables. Per network and batch size, each arm's test accuracy over its ok seeds (the
    others counted); then the effect rule on each other arm against BN (eval mode)."""
    rows = [(name, size, *(seeds_cell(record[arm]["test_acc"][i], record[arm]["outcome"][i])
                           for arm in ARMS))
            for name, record in results["models"].items()
            for i, size in enumerate(results["sizes"])]
    versus_bn = [(name, size, *(compare(record["bn"]["test_acc"][i], record[arm]["test_acc"][i],
                                        record["bn"]["outcome"][i],
                                        record[arm]["outcome"][i])[1] for arm in ARMS[1:]))
                 for name, record in results["models"].items()
                 for i, size in enumerate(results["sizes"])]
    return "\n".join([markdown_table(["model", "batch", *ARMS], rows),
                      markdown_table(["model", "batch", *(f"{arm} - bn" for arm in ARMS[1:])],
                                     versus_bn)])


STRIP_NAMES = {"bn": "BN", "bn_population": "BN, pop.", "brn": "BRN", "gn": "GN", "ln": "LN",
               "none": "no BN"}   # an arm's name in the failure strips (BRN: Batch Renorm)


def arm_style(arm):
    """(label, colour, line format) of an arm, as plot.py names and colours each norm."""
    norm = "bn" if arm == "bn_population" else arm
    name = ("with BN, population statistics" if arm == "bn_population"
            else plot.NORM_LABELS[norm])
    return name, plot.NORM_COLORS[norm], "s--" if arm == "bn_population" else "o-"


def draw(results):
    """The figure from small_batch.json's numbers (also `experiments.py small_batch --redraw`):
    a panel per network on one accuracy scale, each with its failure strip."""
    sizes = results["sizes"]
    failures = {name: [(STRIP_NAMES[arm], arm_style(arm)[1], sizes, record[arm]["outcome"])
                       for arm in ARMS] for name, record in results["models"].items()}
    rows = [len(failure_rows(series)) for series in failures.values()]
    fig, panels = panel_grid(len(rows), rows, height=3.4, extra=1.2)
    for (ax, strip), (name, record) in zip(panels, results["models"].items()):
        for arm in ARMS:
            arm_label, arm_color, fmt = arm_style(arm)
            draw_over_seeds(ax, sizes, record[arm]["test_acc"], record[arm]["outcome"],
                            arm_color, arm_label, fmt=fmt)
        draw_failures(strip, failures[name])
        ax.set(xscale="log", ylabel="test accuracy, eval mode",
               title=f"{name.upper()}: {results['images']:,} training images at every batch size")
        percent_axis(ax)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        strip.set_xlabel("batch size (training)")
        ax.grid(alpha=0.3)
    panels[1][0].sharey(panels[0][0])   # one accuracy scale for both networks
    figure_legend(fig, [ax for ax, _ in panels], ncols=3)
    seeds = len(next(iter(results["models"].values()))["bn"]["outcome"][0])
    fig.suptitle("Small batches: BN against the layers that do not depend on the batch\n"
                 + strip_note(seeds))
    return [fig]
