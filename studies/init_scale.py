"""Initialisation scale, as in CS231n's BN assignment: train and test accuracy after one epoch
against the scale s of every initial weight, with and without BN, for the report's MLP and for
CS231n's deeper network (7 hidden layers of 50 units)."""
import math

import torch
from torch import nn

import mlp
from norms import norm_layers
from studies.common import (draw_sweep, failure_rows, figure_legend, norm_of, panel_grid,
                            strip_note, sweep_assemble, sweep_failures, sweep_table,
                            sweep_train_one, sweep_trainings)

NAME = "init"
QUESTION = "initialisation scale, as in CS231n's assignment"
FIGURES = ("init_scale.png",)
NETWORKS = {"mlp": (784, 128, 64), "deep": (784, *[50] * 7)}   # the widths before the output


def network(widths, bn):
    """linear (no bias, as mlp.py) -> [BN] -> ReLU for each hidden layer, then linear to 10."""
    layers = [nn.Flatten()]
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out, bias=False), *norm_layers(norm_of(bn), n_out, rank=2),
                   nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10, bias=False))


def scaled_init(name, bn, scale):
    """The network with every linear weight drawn from N(0, scale^2) (CS231n's weight_scale).
    The report's MLP is mlp.py's own network."""
    def build():
        model = mlp.build_model(norm_of(bn)) if name == "mlp" else network(NETWORKS[name], bn)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, scale)
        return model
    return build


def default_scales(widths):
    """The weight std that torch's default (U(+-1/sqrt(fan_in))) and Kaiming's (N(0, 2/fan_in),
    for ReLU) give each layer: (lowest, highest) over the layers, since both depend on fan-in."""
    fan_ins = widths
    torch_default = [1 / math.sqrt(3 * f) for f in fan_ins]
    kaiming = [math.sqrt(2 / f) for f in fan_ins]
    return {"torch": (min(torch_default), max(torch_default)),
            "kaiming": (min(kaiming), max(kaiming))}


def train_accuracy(train_x, train_y):
    """The accuracy on 10,000 training images in eval mode: a measure for sweep()."""
    images, labels = train_x[:10_000], train_y[:10_000]

    @torch.no_grad()
    def measure(model):
        model.eval()
        correct = sum((model(batch).argmax(dim=1) == target).sum().item()
                      for batch, target in zip(images.split(500), labels.split(500)))
        model.train()
        return correct / len(images)
    return measure


def scales(study):
    return ([1e-4, 10.0] if study.quick   # quick: a scale only BN survives, one that fails both
            else [float(f"{10 ** (k / 2):.3g}") for k in range(-8, 3)])   # 1e-4 .. 10


def trainings(study):
    """Both networks, every scale s, each without and with BN, at every seed."""
    return [job for name in NETWORKS
            for job in sweep_trainings(study, "scale", scales(study), network=name)]


def train_one(study, job):
    """Train and test accuracy after one epoch from every weight ~ N(0, s^2)."""
    make = lambda bn, job: (scaled_init(job["network"], bn, job["scale"]), study.config())
    return sweep_train_one(study, job, make, measure=train_accuracy(*study.data[:2]))


def assemble(study, jobs, results):
    return {"scales": scales(study),
            "rule": "every linear weight N(0, s^2), one epoch, constant lr 0.1, batch 100",
            "networks": {name: {"widths": list(widths), **default_scales(widths),
                                **sweep_assemble(jobs, results, "scale", network=name)}
                         for name, widths in NETWORKS.items()}}


def table(results):
    return "\n".join(f"{name}, train accuracy:\n\n{sweep_table(record, 'scale', 'measured')}\n"
                     f"{name}, test accuracy:\n\n{sweep_table(record, 'scale')}"
                     for name, record in results["networks"].items())


def draw(results):
    """The figure from init.json's numbers (also `experiments.py init --redraw`): a row per
    network, train accuracy left and test accuracy right, each with its failure strip."""
    titles = {"mlp": "the report's MLP 784-128-64-10", "deep": "CS231n's 7 x 50 network"}
    panels = [(name, record, value, what) for name, record in results["networks"].items()
              for value, what in (("measured", "train"), ("test_acc", "test"))]
    rows = [len(failure_rows(sweep_failures(record, "scale"))) for _, record, _, _ in panels]
    fig, axes = panel_grid(len(panels), rows, height=2.9, extra=1.0)
    for (ax, strip), (name, record, value, what) in zip(axes, panels):
        for default, shade in (("torch", "tab:gray"), ("kaiming", "tab:olive")):
            ax.axvspan(*record[default], color=shade, alpha=0.15,
                       label=f"{default}'s scales over the layers")
            strip.axvspan(*record[default], color=shade, alpha=0.15)
        draw_sweep(ax, strip, record, "scale", "weight scale s: every weight ~ N(0, s²)",
                   f"{what} accuracy, one epoch", f"{titles[name]}: {what}", value=value)
    figure_legend(fig, [ax for ax, _ in axes])
    fig.suptitle("Initialisation scale (CS231n's experiment)\n"
                 + strip_note(len(panels[0][1]["bn"][0]["outcome"])))
    return [fig]
