"""Batch size: BN from batches of 2 to 512 images, at a constant rate and at a rate scaled with
the batch; evaluated three ways (running estimates, the test batches' own statistics as with a
forgotten model.eval(), population statistics); and why batch 2 fails, measured."""
import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm
import plot
from studies.common import (add_panels, color, compare, draw_failures, draw_over_seeds,
                            failure_rows, figure_legend, first_images, grid_heights, label,
                            markdown_table, mlp_with, module_input, ok_values, outcome,
                            percent_axis, preserved, seeds_cell, show_seeds, strip_note)

NAME = "batch"
QUESTION = "batch size: eval mode against a forgotten model.eval(), and why batch 2 fails"
FIGURES = ("batch_size.png",)
RATES = {"constant": lambda size: 0.1, "linear": lambda size: 0.1 * size / 100}
RULES = {"constant": "lr 0.1 at every batch size", "linear": "lr = 0.1 * batch / 100"}
NEAR_ONE = 1e-3   # |x_hat| within this of 1: what BN's output is for 2 values per channel
MEASURED = ("test_acc", "outcome", "last_window_acc", "first_grad_norm", "x_hat_near_one",
            "batch_stats", "population")   # a job's result; the last three with BN only


@torch.no_grad()
def batch_statistics_accuracy(model, images, labels, batch_size):
    """Test accuracy with BN left in training mode (a forgotten model.eval()), batches of
    batch_size; the model's running estimates are then put back as they were."""
    correct = 0
    with preserved(model):
        model.train()
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if len(batch) < 2:   # a batch of one has no variance
                break
            correct += (model(batch).argmax(dim=1) == labels[start:start + len(batch)]).sum().item()
    return correct / len(images)


def population_accuracy(model, images, test_x, test_y, batch_size):
    """Test accuracy of a copy of the model with population statistics from `images` in
    batches of batch_size (the BN paper's Algorithm 2, `recalibrate`)."""
    population = copy.deepcopy(model)
    batchnorm.recalibrate(population, images[: len(images) // batch_size * batch_size]
                          .split(batch_size))
    return outcome(population, test_x, test_y, 0.0)[1]


def last(values):
    return values[-1] if values else None


class Mechanism:
    """What the first BN layer and the first linear layer see in training, at the last step of
    each window: the share of x_hat within NEAR_ONE of +-1, and the first layer's weight-gradient
    norm. Measured in on_step, kept in on_window: only windows that completed with a finite loss
    count, as in history["train"]."""

    def __init__(self, model, config, steps_per_epoch):
        self.first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
        self.first_bn = (batchnorm.batchnorm_layers(model) or [None])[0]
        self.disp_freq, self.steps_per_epoch = config["disp_freq"], steps_per_epoch
        self.x_hat_near_one, self.first_grad_norm = [], []
        self.pending = None

    def on_step(self, iteration, model, optimizer, images, labels, loss):
        """At a window's last step (solver.train_one_epoch's rule): this step's gradient, and
        x_hat of the first BN layer's input on this step's images."""
        if iteration % self.disp_freq and iteration % self.steps_per_epoch:
            return
        near = None
        if self.first_bn is not None:
            x = module_input(model, self.first_bn, images)
            x_hat = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False)
                                                     + self.first_bn.eps)
            near = ((x_hat.abs() - 1).abs() < NEAR_ONE).float().mean().item()
        self.pending = (self.first_linear.weight.grad.norm().item(), near)

    def on_window(self, iteration, model):
        grad_norm, near = self.pending
        self.first_grad_norm.append(grad_norm)
        if near is not None:
            self.x_hat_near_one.append(near)


def sizes_of(study):
    return [2, 32] if study.quick else [2, 4, 8, 32, 100, 512]


def data_of(study):
    """study.data; quick: its first 100 training and 100 test images."""
    return first_images(study.data, 100, 100) if study.quick else study.data


def trainings(study):
    """Each rate rule and batch size, at every seed, with BN and then without."""
    return [{"rule": rule, "batch": size, "seed": seed, "arm": arm}
            for rule in RATES for size in sizes_of(study) for seed in study.seeds
            for arm in ("bn", "no_bn")]


def train_one(study, job):
    """One epoch at the job's batch size and rule's rate; with BN, also evaluated with the test
    batches' statistics and with population statistics (None where the loss diverged)."""
    size, bn = job["batch"], job["arm"] == "bn"
    data = data_of(study)
    train_x, _, test_x, test_y = data
    config = study.config(batch_size=size, learning_rate=RATES[job["rule"]](size),
                          disp_freq=max(1, 5000 // size))
    model = study.model(mlp_with(bn), job["seed"])
    mechanism = Mechanism(model, config, len(train_x) // size)
    history, verdict, acc = study.train(model, config, job["seed"], on_step=mechanism.on_step,
                                        on_window=mechanism.on_window, data=data)
    # a run that diverged in its first window has recorded none of these
    result = {"test_acc": acc, "outcome": verdict,
              "last_window_acc": last(history["train"]["acc"]),
              "first_grad_norm": last(mechanism.first_grad_norm)}
    if bn:
        diverged = verdict == "diverged"
        result.update(x_hat_near_one=last(mechanism.x_hat_near_one),
                      batch_stats=None if diverged else batch_statistics_accuracy(
                          model, test_x, test_y, size),
                      population=None if diverged else population_accuracy(
                          model, train_x[:10_000], test_x, test_y, size))
    return result


def assemble(study, jobs, results):
    """Per rule, per batch size, a list over seeds of each number (arm keys as before)."""
    sizes = sizes_of(study)
    keys = {"bn": {"test_acc": "bn_eval", "outcome": "bn_outcome",
                   "batch_stats": "bn_batch_stats", "population": "bn_population",
                   "last_window_acc": "bn_last_window_acc", "x_hat_near_one": "x_hat_near_one",
                   "first_grad_norm": "first_grad_norm_bn"},
            "no_bn": {"test_acc": "no_bn", "outcome": "no_bn_outcome",
                      "last_window_acc": "no_bn_last_window_acc",
                      "first_grad_norm": "first_grad_norm_no_bn"}}
    arms = {}
    for rule, rate in RATES.items():
        arm = {"lr": [rate(size) for size in sizes],
               **{name: [[] for _ in sizes] for names in keys.values() for name in names.values()}}
        for job, result in zip(jobs, results):
            if job["rule"] == rule:
                for key, name in keys[job["arm"]].items():
                    arm[name][sizes.index(job["batch"])].append(result[key])
        arms[rule] = arm
    return {"sizes": sizes, "rules": RULES, "epochs": 1, "arms": arms}


def table(results):
    """Two tables. Per rate rule and batch size: each evaluation's test accuracy, the share of
    x_hat at +-1, the first layer's weight-gradient norm at the last step and the last window's
    training accuracy, over the ok seeds (with BN: the BN
    run's outcome; the others counted in the first cell of each arm). Then the effect rule on
    with BN against without, and on each other evaluation of the BN runs against eval mode."""
    ok = lambda values, outcomes, spec=".2%": show_seeds(ok_values(values, outcomes), spec)
    values, compared = [], []
    for rule, arm in results["arms"].items():
        for i, size in enumerate(results["sizes"]):
            bn, no_bn = arm["bn_outcome"][i], arm["no_bn_outcome"][i]
            values.append((rule, size, f"{arm['lr'][i]:g}", seeds_cell(arm["bn_eval"][i], bn),
                           ok(arm["bn_population"][i], bn), ok(arm["bn_batch_stats"][i], bn),
                           seeds_cell(arm["no_bn"][i], no_bn),
                           ok(arm["x_hat_near_one"][i], bn, ".2f"),
                           ok(arm["first_grad_norm_bn"][i], bn, ".1e"),
                           ok(arm["bn_last_window_acc"][i], bn)))
            compared.append((rule, size,
                             compare(arm["no_bn"][i], arm["bn_eval"][i], no_bn, bn)[1],
                             *(compare(arm["bn_eval"][i], arm[key][i], bn, bn)[1]
                               for key in ("bn_population", "bn_batch_stats"))))
    return "\n".join([
        markdown_table(["rate", "batch", "lr", "BN eval", "BN population", "BN batch stats",
                        "no BN", "x_hat at +-1", "BN: first layer's grad norm",
                        "BN last window"], values),
        markdown_table(["rate", "batch", "with BN - without BN (eval mode)",
                        "population - eval mode", "batch stats - eval mode"], compared)])


def draw(results):
    """The figure from batch.json's numbers (also `experiments.py batch --redraw`): accuracy
    at both rate rules (top), each with its failure strip (a BN run's outcome is its eval-mode
    accuracy's: a failed BN run is left out of all three evaluations' lines), and the batch-2
    mechanism under the linear rule (bottom)."""
    sizes = results["sizes"]
    failures = {rule: [("BN", color(True), sizes, arm["bn_outcome"]),
                       ("no BN", color(False), sizes, arm["no_bn_outcome"])]
                for rule, arm in results["arms"].items()}
    rows = [len(failure_rows(series)) for series in failures.values()]
    top_height = grid_heights(2, rows)[0] + 1.3   # the suptitle and the legend
    fig = plt.figure(figsize=(plot.WIDTH, top_height + 3.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, 3.4])
    panels = add_panels(top, 2, rows) + add_panels(bottom, 2)
    seeds = len(results["arms"]["constant"]["bn_outcome"][0])
    for (ax, strip), (rule, arm) in zip(panels, results["arms"].items()):
        draw_over_seeds(ax, sizes, arm["bn_eval"], arm["bn_outcome"], color(True),
                        "with BN, eval mode (running estimates)")
        draw_over_seeds(ax, sizes, arm["bn_population"], arm["bn_outcome"], "tab:purple",
                        "with BN, population statistics", fmt="d:")
        draw_over_seeds(ax, sizes, arm["bn_batch_stats"], arm["bn_outcome"], "tab:green",
                        "with BN, each test batch's statistics (no model.eval())", fmt="s--")
        draw_over_seeds(ax, sizes, arm["no_bn"], arm["no_bn_outcome"], color(False),
                        "without BN", fmt="^-")
        draw_failures(strip, failures[rule])
        ax.set(xscale="log", ylim=(0, 1.02), ylabel="test accuracy, one epoch",
               title=f"{rule} rate: {results['rules'][rule]}")
        percent_axis(ax)
        ax.set_xticks(sizes, [str(s) for s in sizes])   # the lr: the rule in the title
        ax.minorticks_off()
        strip.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    figure_legend(top, [panels[0][0]])
    linear = results["arms"]["linear"]   # the ok runs' means; the others marked on their own
    grads, shares = panels[2][0], panels[3][0]
    for key, outcomes, fmt, bn in (("first_grad_norm_bn", "bn_outcome", "o-", True),
                                   ("first_grad_norm_no_bn", "no_bn_outcome", "^-", False)):
        draw_over_seeds(grads, sizes, linear[key], linear[outcomes], color(bn), label(bn),
                        fmt=fmt, failures="values")
    grads.set(yscale="log", ylabel="first layer's |grad W|, last step",
              title="linear rate: the first layer's gradient")
    draw_over_seeds(shares, sizes, linear["x_hat_near_one"], linear["bn_outcome"], color(True),
                    label(True), fmt="o:", failures="values")
    shares.set(ylim=(0, 1.02), ylabel="share of |x_hat| within 1e-3 of 1",
               title="linear rate: x_hat at ±1 (first BN layer)")
    percent_axis(shares)
    for ax in (grads, shares):
        ax.set(xscale="log", xlabel="batch size (linear rate)")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8.5, loc="best")
    fig.suptitle("Batch size: MLP 784-128-64-10, one epoch each (a failed BN run: in none of "
                 "its three evaluations' lines)\n" + strip_note(seeds))
    return [fig]
