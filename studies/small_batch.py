"""When BN fails, what instead: GroupNorm's Figure 1 at MNIST scale. Test accuracy (eval mode)
against the batch size, from 2 to 128 images, for BN, BN evaluated with population statistics,
Batch Renorm, GroupNorm, LayerNorm and no normalization, on the MLP and the CNN."""
import copy

import matplotlib.pyplot as plt

import batchnorm
import cnn
import mlp
import plot
from studies.common import draw_over_seeds, outcome, print_table, provenance, show_seeds

FIGURES = ("small_batch.png",)
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


def run(study):
    sizes, images = ([2, 16], 200) if study.quick else (SIZES, IMAGES)
    train_x, train_y, test_x, test_y = study.data
    data = (train_x[:images], train_y[:images], test_x, test_y)
    results = {"provenance": provenance(study.seeds), "sizes": sizes, "images": len(data[0]),
               "rule": RULE, "models": {}}
    for name, script in (("mlp", mlp), ("cnn", cnn)):
        record = {arm: {"test_acc": [], "outcome": []} for arm in ARMS}
        for size in sizes:
            config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                                  disp_freq=max(1, 5000 // size))
            cell = {arm: {"test_acc": [], "outcome": []} for arm in ARMS}
            for norm in NORMS:
                for seed in study.seeds:
                    model = study.model(lambda: script.build_model(norm), seed)
                    history, label, acc = study.train(model, config, seed, data=data)
                    cell[norm]["test_acc"].append(acc)
                    cell[norm]["outcome"].append(label)
                    if norm == "bn":   # the same run, evaluated with population statistics
                        if label != "diverged":
                            label, acc = population_outcome(model, data[0], size, test_x, test_y,
                                                            history["train"]["loss"][-1])
                        cell["bn_population"]["test_acc"].append(acc)
                        cell["bn_population"]["outcome"].append(label)
            for arm in ARMS:
                record[arm]["test_acc"].append(cell[arm]["test_acc"])
                record[arm]["outcome"].append(cell[arm]["outcome"])
            study.progress("small_batch", f"{name}, batch {size}, lr {config['learning_rate']:g}",
                           ", ".join(f"{arm} {show_seeds(cell[arm]['test_acc'])}"
                                     for arm in ("bn", "gn", "none")))
        results["models"][name] = record

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
               title=f"{name.upper()}: {len(data[0]):,} training images at every batch size")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Small batches: BN against the layers that do not depend on the batch "
                 "(mean over seeds, band: their range)")
    print_table(["model", "batch", *ARMS],
                [(name, size, *(show_seeds(record[arm]["test_acc"][i]) for arm in ARMS))
                 for name, record in results["models"].items() for i, size in enumerate(sizes)])
    study.save("small_batch", results, fig, FIGURES[0])
