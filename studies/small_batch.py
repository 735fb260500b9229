"""When BN fails, what instead: GroupNorm's Figure 1 at MNIST scale. Test accuracy (eval mode)
against the batch size, from 2 to 128 images, for BN, BN evaluated with population statistics,
Batch Renorm, GroupNorm, LayerNorm and no normalization, on the MLP and the CNN."""
import copy

import matplotlib.pyplot as plt

import batchnorm
import cnn
import mlp
import plot
from studies.common import (compare, draw_over_seeds, first_images, markdown_table, outcome,
                            seeds_cell)

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


def draw(results):
    """The figure from small_batch.json's numbers (also `experiments.py small_batch --redraw`)."""
    sizes = results["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, (name, record) in zip(axes, results["models"].items()):
        for arm in ARMS:
            norm = "bn" if arm == "bn_population" else arm
            label = ("with BN, population statistics" if arm == "bn_population"
                     else plot.NORM_LABELS[norm])
            draw_over_seeds(ax, sizes, record[arm]["test_acc"], record[arm]["outcome"],
                            plot.NORM_COLORS[norm], label,
                            fmt="s--" if arm == "bn_population" else "o-")
        ax.set(xscale="log", xlabel="batch size (training)", ylabel="test accuracy, eval mode",
               title=f"{name.upper()}: {results['images']:,} training images at every batch size")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Small batches: BN against the layers that do not depend on the batch "
                 "(mean over the ok seeds, band: their range; failed and diverged runs marked)")
    return [fig]
