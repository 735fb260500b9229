"""The momentum convention mix-up: the report's running-average momentum 0.9 (torch's 0.1)
against 0.1 in the report's convention (torch's 0.9), at batch 100 and batch 8. Both arms train
identically (the momentum only sets the running estimates, which training never uses): they
differ only in the estimates that evaluation uses, so their gap is paired step by step."""
import matplotlib.pyplot as plt
import torch

import batchnorm
import mlp
import plot
import solver
from studies.common import (add_panels, compare, figure_legend, first_images, markdown_table,
                            module_input, ok_values, percent_axis, seeds_cell, show_seeds)

NAME = "momentum"
QUESTION = "the momentum convention mix-up (0.9 here is 0.1 in torch)"
FIGURES = ("momentum_convention.png",)
COLORS = {0.9: "tab:blue", 0.1: "tab:red"}
SIZES = (100, 8)
MOMENTA = (0.9, 0.1)


def settings(study):
    """(how many of the last steps are recorded, data): quick: the last 12 (enough to check
    the 0.1 arm's last ten batches) on 400 training and 200 test images."""
    if study.quick:
        return 12, first_images(study.data, 400, 200)
    return 200, study.data


def trainings(study):
    """Both momenta at each batch size and seed: the two arms of a pair train identically."""
    return [{"batch": size, "seed": seed, "momentum": momentum}
            for size in SIZES for seed in study.seeds for momentum in MOMENTA]


def train_one(study, job):
    """One epoch with every BN layer's running-average momentum set to job["momentum"], at
    batch job["batch"] (the rate scaled with it), under the failure rule.

    Recorded at the on_step of each of the last steps, where step k's forward has run and its
    update has not: the first BN layer's batch mean on batch k and its running mean, which now
    includes it (unit 0), and the eval-mode test accuracy of the network that measured them:
    the weights after update k - 1 with the running estimates through batch k. Every step's
    training loss is kept too, to show that the two arms of a pair trained identically."""
    size, momentum, seed = job["batch"], job["momentum"], job["seed"]
    config = study.config(batch_size=size, learning_rate=0.1 * size / 100)
    last, data = settings(study)
    train_x, _, test_x, test_y = data
    total_steps = len(train_x) // size
    model = study.model(lambda: mlp.build_model("bn"), seed)
    for layer in batchnorm.batchnorm_layers(model):
        layer.momentum = momentum
    first_bn = batchnorm.batchnorm_layers(model)[0]
    record = {"step": [], "test_acc": [], "running_mean": [], "batch_mean": []}
    losses = []

    def on_step(iteration, model, optimizer, images, labels, loss):
        losses.append(loss.detach())
        if iteration > total_steps - last:
            record["step"].append(iteration)
            record["batch_mean"].append(
                module_input(model, first_bn, images)[:, 0].mean().item())
            record["running_mean"].append(first_bn.running_mean[0].item())
            record["test_acc"].append(solver.evaluate(model, test_x, test_y)[1])

    _, verdict, acc = study.train(model, config, seed, on_step=on_step, data=data)
    return {**record, "outcome": verdict, "final_test_acc": acc,
            "train_loss": torch.stack(losses).tolist()}


def pair(high, low):
    """The paired numbers of the arms 0.9 (`high`) and 0.1 (`low`) of one batch size and seed,
    and both arms' outcomes (their evaluations differ, so may their verdicts)."""
    gaps = [a - b for a, b in zip(high["test_acc"], low["test_acc"])]
    share = lambda hits: sum(hits) / len(gaps) if gaps else None
    return {"trained_identically": torch.equal(torch.tensor(high["train_loss"]),
                                               torch.tensor(low["train_loss"])),
            "outcomes": [high["outcome"], low["outcome"]],
            "mean_gap": share(gaps),                  # 0.9 minus 0.1
            "share_09_wins": share(g > 0 for g in gaps),
            "share_ties": share(g == 0 for g in gaps)}


def summarize(run):
    """One run's summary: its test accuracy averaged over the recorded last steps, and the
    standard deviation of its running mean over them."""
    return {"last_steps_acc": sum(run["test_acc"]) / len(run["test_acc"]) if run["test_acc"]
            else None,
            "running_mean_std": torch.tensor(run["running_mean"]).std().item()
            if len(run["running_mean"]) > 1 else None}


def assemble(study, jobs, results):
    """Every run's record (its per-step losses are compared, not kept) with its summary, and
    each pair's gap."""
    runs = [{**{k: v for k, v in result.items() if k != "train_loss"}, **summarize(result),
             "batch": job["batch"], "momentum": job["momentum"], "seed": job["seed"]}
            for job, result in zip(jobs, results)]
    by_arm = {(job["batch"], job["seed"], job["momentum"]): result
              for job, result in zip(jobs, results)}
    paired = [{"batch": size, "seed": seed,
               **pair(by_arm[size, seed, 0.9], by_arm[size, seed, 0.1])}
              for size in SIZES for seed in study.seeds]
    return {"last_steps": settings(study)[0], "runs": runs, "paired": paired}


def arms_of(results, size):
    """{momentum: {key: list over seeds}} of the runs at batch `size`, in seed order."""
    arms = {}
    for run_ in sorted((r for r in results["runs"] if r["batch"] == size),
                       key=lambda r: r["seed"]):
        arm = arms.setdefault(run_["momentum"], {})
        for key in ("outcome", "final_test_acc", "last_steps_acc", "running_mean_std"):
            arm.setdefault(key, []).append(run_[key])
    return arms


def table(results):
    """Per batch size, each momentum's final test accuracy, its accuracy over the last steps
    and the spread of its running mean, over its ok seeds (the others counted); the effect
    rule on 0.9 against 0.1 for both accuracies; and over the pairs whose arms are both ok, the
    share of steps where 0.9 is ahead or level."""
    last = results["last_steps"]
    accuracy, steps = [], []
    for size in sorted({r["batch"] for r in results["runs"]}, reverse=True):
        arms, pairs = arms_of(results, size), [p for p in results["paired"]
                                               if p["batch"] == size]
        high, low = arms[0.9], arms[0.1]
        both = [p for p in pairs if p["outcomes"] == ["ok", "ok"]]
        identical = sum(p["trained_identically"] for p in pairs)
        accuracy.append((size, f"{identical} of {len(pairs)}",
                         seeds_cell(high["final_test_acc"], high["outcome"]),
                         seeds_cell(low["final_test_acc"], low["outcome"]),
                         compare(low["final_test_acc"], high["final_test_acc"], low["outcome"],
                                 high["outcome"])[1]))
        steps.append((size, show_seeds(ok_values(high["last_steps_acc"], high["outcome"])),
                      show_seeds(ok_values(low["last_steps_acc"], low["outcome"])),
                      compare(low["last_steps_acc"], high["last_steps_acc"], low["outcome"],
                              high["outcome"])[1],
                      show_seeds([p["share_09_wins"] for p in both], ".0%"),
                      show_seeds([p["share_ties"] for p in both], ".0%"),
                      " / ".join(show_seeds(ok_values(arm["running_mean_std"], arm["outcome"]),
                                            ".3f") for arm in (high, low))))
    return "\n".join([
        markdown_table(["batch", "pairs trained identically", "final test acc, 0.9",
                        "final test acc, 0.1", "0.9 - 0.1"], accuracy),
        markdown_table(["batch", f"test acc over the last {last} steps, 0.9", "0.1",
                        "0.9 - 0.1", "steps 0.9 ahead", "steps level",
                        "running mean std, 0.9 / 0.1"], steps)])


def draw(results):
    """The figure from momentum.json's numbers (also `experiments.py momentum --redraw`)."""
    sizes = sorted({r["batch"] for r in results["runs"]}, reverse=True)
    last = results["last_steps"]
    fig = plt.figure(figsize=(plot.WIDTH, 2 * (3.1 + 0.7) + 0.4), layout="constrained")
    rows = fig.subfigures(2, 1)   # each row its legend under it, hiding no step
    axes = [[ax for ax, _ in add_panels(row, len(sizes), cols=len(sizes), height=3.1)]
            for row in rows]
    for column, size in enumerate(sizes):
        pairs = [p for p in results["paired"] if p["batch"] == size]
        shown = next((p for p in pairs if p["outcomes"] == ["ok", "ok"]), pairs[0])
        first_seed = shown["seed"]   # one seed's steps: the first whose two arms are ok
        for run_ in [r for r in results["runs"] if r["batch"] == size and r["seed"] == first_seed]:
            label = (f"momentum {run_['momentum']} (torch: {1 - run_['momentum']:.1f})"
                     + ("" if run_["outcome"] == "ok" else f", {run_['outcome']}"))
            color = COLORS[run_["momentum"]]
            axes[0][column].plot(run_["step"], run_["test_acc"], color=color, label=label)
            axes[1][column].plot(run_["step"], run_["running_mean"], color=color,
                                 label=f"running mean, {label}")
            if run_["momentum"] == 0.9:   # the same batches in both arms: drawn once
                axes[1][column].plot(run_["step"], run_["batch_mean"], ".", color="tab:gray",
                                     ms=3, label="batch means (the same in both arms)")
        axes[0][column].set(title=f"batch {size}: test accuracy (eval mode), seed {first_seed}",
                            ylabel="test accuracy", xlabel=f"training step (the last {last})")
        percent_axis(axes[0][column])
        axes[1][column].set(title=f"batch {size}: first BN layer, unit 0", xlabel="training step",
                            ylabel="mean of its input")
        for ax in (axes[0][column], axes[1][column]):
            ax.grid(alpha=0.3)
    for row, row_axes in zip(rows, axes):
        figure_legend(row, row_axes)
    fig.suptitle("The same training, two momenta for the running estimates")
    return [fig]
