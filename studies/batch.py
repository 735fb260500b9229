"""Batch size: BN from batches of 2 to 512 images, at a constant rate and at a rate scaled with
the batch; evaluated three ways (running estimates, the test batches' own statistics as with a
forgotten model.eval(), population statistics); and why batch 2 fails, measured."""
import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm
from studies.common import (color, draw_over_seeds, mean_and_range, mlp_with, outcome,
                            print_table, provenance, show_seeds)

FIGURES = ("batch_size.png",)
RATES = {"constant": lambda size: 0.1, "linear": lambda size: 0.1 * size / 100}
NEAR_ONE = 1e-3   # |x_hat| within this of 1: what BN's output is for 2 values per channel


@torch.no_grad()
def batch_statistics_accuracy(model, images, labels, batch_size):
    """Test accuracy with BN left in training mode (a forgotten model.eval()), batches of
    batch_size. On a copy, so that the running estimates of the real model are not moved."""
    model = copy.deepcopy(model).train()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if len(batch) < 2:   # a batch of one has no variance
            break
        correct += (model(batch).argmax(dim=1) == labels[start:start + len(batch)]).sum().item()
    return correct / len(images)


def last(values):
    return values[-1] if values else None


def mean(values):
    """The mean over seeds of what was recorded; nan where no seed recorded anything."""
    return (mean_and_range(values) or (float("nan"),))[0]


class Mechanism:
    """What the first BN layer and the first linear layer see in training, at the last window:
    the share of x_hat within NEAR_ONE of +-1, and the first layer's weight-gradient norm."""

    def __init__(self, model):
        self.first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
        self.first_bn = (batchnorm.batchnorm_layers(model) or [None])[0]
        self.x_hat_near_one, self.first_grad_norm = [], []
        self.latest = None
        if self.first_bn is not None:
            self.first_bn.register_forward_pre_hook(self._keep)

    def _keep(self, layer, inputs):
        if layer.training:
            self.latest = inputs[0].detach()

    def record(self, iteration, model):
        self.first_grad_norm.append(self.first_linear.weight.grad.norm().item())
        if self.latest is not None:
            x = self.latest
            x_hat = (x - x.mean(dim=0)) / torch.sqrt(x.var(dim=0, unbiased=False)
                                                     + self.first_bn.eps)
            near = ((x_hat.abs() - 1).abs() < NEAR_ONE).float().mean().item()
            self.x_hat_near_one.append(near)


def run(study):
    """Batch sizes 2..512, each seeing one epoch, at both rate rules."""
    sizes = [2, 8, 32, 100] if study.quick else [2, 4, 8, 32, 100, 512]
    train_x, _, test_x, test_y = study.data
    recalibration = train_x[:10_000]   # population statistics from these, in batches of B
    results = {"provenance": provenance(study.seeds), "sizes": sizes,
               "rules": {"constant": "lr 0.1 at every batch size",
                         "linear": "lr = 0.1 * batch / 100"},
               "epochs": 1, "arms": {}}
    for rule, rate in RATES.items():
        arm = {key: [] for key in ("lr", "no_bn", "no_bn_outcome", "bn_eval", "bn_outcome",
                                   "bn_batch_stats", "bn_population", "bn_last_window_acc",
                                   "no_bn_last_window_acc", "x_hat_near_one",
                                   "first_grad_norm_bn", "first_grad_norm_no_bn")}
        for size in sizes:
            config = study.config(batch_size=size, learning_rate=rate(size),
                                  disp_freq=max(1, 5000 // size))
            cell = {key: [] for key in arm if key != "lr"}
            for seed in study.seeds:
                for bn in (True, False):
                    model = study.model(mlp_with(bn), seed)
                    mechanism = Mechanism(model)
                    history, verdict, acc = study.train(model, config, seed,
                                                        on_window=mechanism.record)
                    tag = "bn" if bn else "no_bn"
                    cell["bn_eval" if bn else "no_bn"].append(acc)
                    cell[f"{tag}_outcome"].append(verdict)
                    # a run that diverged in its first window has recorded none of these
                    cell[f"{tag}_last_window_acc"].append(last(history["train"]["acc"]))
                    cell[f"first_grad_norm_{tag}"].append(last(mechanism.first_grad_norm))
                    if not bn:
                        continue
                    cell["x_hat_near_one"].append(last(mechanism.x_hat_near_one))
                    diverged = verdict == "diverged"
                    cell["bn_batch_stats"].append(
                        None if diverged else batch_statistics_accuracy(model, test_x, test_y,
                                                                        size))
                    population = copy.deepcopy(model)
                    batchnorm.recalibrate(population, recalibration[
                        : len(recalibration) // size * size].split(size))
                    cell["bn_population"].append(
                        None if diverged else outcome(population, test_x, test_y, 0.0)[1])
            arm["lr"].append(rate(size))
            for key, values in cell.items():
                arm[key].append(values)
            study.progress("batch", f"{rule} rate, batch {size}, lr {rate(size):g}",
                           f"BN {show_seeds(cell['bn_eval'])}, "
                           f"no BN {show_seeds(cell['no_bn'])}")
        results["arms"][rule] = arm

    print_table(["rate", "batch", "lr", "BN eval", "BN population", "BN batch stats", "no BN",
                 "x_hat at +-1", "BN last window"],
                [(rule, size, f"{arm['lr'][i]:g}", show_seeds(arm["bn_eval"][i]),
                  show_seeds(arm["bn_population"][i]), show_seeds(arm["bn_batch_stats"][i]),
                  show_seeds(arm["no_bn"][i]),
                  f"{mean(arm['x_hat_near_one'][i]):.2f}",
                  show_seeds(arm["bn_last_window_acc"][i]))
                 for rule, arm in results["arms"].items() for i, size in enumerate(sizes)])
    study.save("batch", results, draw(results), FIGURES[0])


def draw(results):
    """The figure from batch.json's numbers (also `experiments.py batch --redraw`): accuracy
    at both rate rules, and the batch-2 mechanism under the linear rule."""
    sizes = results["sizes"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for ax, (rule, arm) in zip(axes, results["arms"].items()):
        draw_over_seeds(ax, sizes, arm["bn_eval"], arm["bn_outcome"], color(True),
                        "with BN, eval mode (running estimates)")
        draw_over_seeds(ax, sizes, arm["bn_population"], arm["bn_outcome"], "tab:purple",
                        "with BN, population statistics", fmt="d:")
        draw_over_seeds(ax, sizes, arm["bn_batch_stats"], arm["bn_outcome"], "tab:green",
                        "with BN, each test batch's statistics (no model.eval())", fmt="s--")
        draw_over_seeds(ax, sizes, arm["no_bn"], arm["no_bn_outcome"], color(False),
                        "without BN", fmt="^-", nudge=1.2)   # its failures beside BN's
        ax.set(xscale="log", ylim=(-0.02, 1.02), xlabel="batch size (and lr)",
               ylabel="test accuracy after one epoch",
               title=f"{rule} rate: {results['rules'][rule]}")
        ax.set_xticks(sizes, [f"{s}\n{lr:g}" for s, lr in zip(sizes, arm["lr"])])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="center right")
    linear = results["arms"]["linear"]
    for key, style, text in (("first_grad_norm_bn", "o-", "with BN"),
                             ("first_grad_norm_no_bn", "^-", "without BN")):
        means = [mean(v) for v in linear[key]]
        axes[2].plot(sizes, means, style, color=color(key == "first_grad_norm_bn"),
                     label=f"first layer's |grad W|, {text}")
    axes[2].set(xscale="log", yscale="log", xlabel="batch size (linear rate)",
                ylabel="norm of the first layer's weight gradient, last step",
                title="linear rate: x_hat at +-1, and the first layer's gradient")
    axes[2].set_xticks(sizes, [str(s) for s in sizes])
    twin = axes[2].twinx()
    twin.plot(sizes, [mean(v) for v in linear["x_hat_near_one"]], "k:",
              label="share of |x_hat| within 1e-3 of 1 (first BN)")
    twin.set(ylabel="share of x_hat at +-1", ylim=(-0.02, 1.02))
    axes[2].legend(fontsize=7, loc="upper right")
    twin.legend(fontsize=7, loc="lower left")
    axes[2].grid(alpha=0.3)
    fig.suptitle("Batch size: MLP 784-128-64-10, one epoch each (band: range over seeds)")
    return fig
