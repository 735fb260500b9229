"""The BN paper's section 2: what goes wrong when the gradient ignores that mu_B and sigma_B^2
depend on the weights (`detach_stats=True`), seen in the bias before BN. Four arms: the true
gradient; detached statistics; detached without a bias (only the wrong gradient for W is
left); detached with beta frozen at 0 (nothing absorbs the bias: the paper's unbounded case)."""
import torch
from torch import nn

import batchnorm
import mlp
import plot
from batchnorm import BatchNorm1d
from studies.common import (compare, figure_legend, first_images, markdown_table, panel_grid,
                            seeds_cell)

NAME = "detach"
QUESTION = "the BN paper's section 2: detached statistics"
FIGURES = ("detached_statistics.png",)
ARMS = {  # name -> (bias before BN, detach_stats, beta trained)
    "true": (True, False, True), "detached": (True, True, True),
    "detached_no_bias": (False, True, True), "detached_beta_frozen": (True, True, False)}
COLORS = {"true": "tab:blue", "detached": "tab:red", "detached_no_bias": "tab:orange",
          "detached_beta_frozen": "tab:brown"}
RECORDED = ("weight_norm", "weight_grad", "beta_grad", "bias_norm", "bias_grad")   # per window


def norm(tensors):
    """The Euclidean norm of several tensors taken as one vector."""
    return sum(t.norm() ** 2 for t in tensors).sqrt().item()


def mlp_with_bias():
    """mlp.py's network with BN, but each hidden linear layer with a bias (mlp.py's have none:
    BN's beta takes its place), so that the bias the paper's section 2 follows is there."""
    def hidden(n_in, n_out):
        return [nn.Linear(n_in, n_out), BatchNorm1d(n_out), nn.ReLU()]
    return nn.Sequential(nn.Flatten(), *hidden(784, 128), *hidden(128, 64),
                         nn.Linear(64, 10, bias=False))


def build(bias, detach, beta_trained):
    model = mlp_with_bias() if bias else mlp.build_model("bn")
    for layer in batchnorm.batchnorm_layers(model):
        layer.detach_stats = detach
        layer.bias.requires_grad_(beta_trained)   # frozen: beta stays 0, it gets no gradient
    return model


def settings(study):
    """(epochs, data): quick: one pass over 300 training images, 200 test images."""
    if study.quick:
        return 1, first_images(study.data, 300, 200)
    return 3, study.data


def trainings(study):
    return [{"arm": name, "seed": seed} for name in ARMS for seed in study.seeds]


def train_one(study, job):
    """mlp.py's network in one arm, no weight decay (so nothing but the gradient moves the
    biases); after every window: the hidden layers' weight and bias norms, and the gradients
    of the window's last step (solver.py zeroes them only when the next step begins)."""
    bias, detach, beta_trained = ARMS[job["arm"]]
    epochs, data = settings(study)
    config = study.config(max_epoch=epochs, weight_decay=0.0)
    model = study.model(lambda: build(bias, detach, beta_trained), job["seed"])
    hidden = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    betas = [layer.bias for layer in batchnorm.batchnorm_layers(model)]
    record = {key: [] for key in ("iter", "weight_norm", "weight_grad", "beta_grad")
              + (("bias_norm", "bias_grad") if bias else ())}

    def on_window(iteration, model):
        record["iter"].append(iteration)
        record["weight_norm"].append(norm(m.weight for m in hidden))
        record["weight_grad"].append(norm(m.weight.grad for m in hidden))
        record["beta_grad"].append(norm(b.grad for b in betas) if beta_trained else 0.0)
        if bias:
            record["bias_norm"].append(norm(m.bias for m in hidden))
            record["bias_grad"].append(norm(m.bias.grad for m in hidden))

    start = norm(m.bias for m in hidden) if bias else 0.0
    history, verdict, acc = study.train(model, config, job["seed"], on_window=on_window,
                                        data=data)
    return {"test_acc": acc, "outcome": verdict, "train_loss": history["train"]["loss"],
            "bias_norm_at_start": start, **record}


def assemble(study, jobs, results):
    """Per arm, each number as a list over seeds (the arm without a bias has no bias lists)."""
    arms = {name: {"test_acc": [], "outcome": [], "iter": None, "train_loss": [],
                   "bias_norm_at_start": [], **{key: [] for key in RECORDED}} for name in ARMS}
    for job, result in zip(jobs, results):
        arm = arms[job["arm"]]
        arm["iter"] = result["iter"]
        for key, value in result.items():
            if key != "iter":
                arm[key].append(value)
    return {"epochs": settings(study)[0], "arms": arms}


def median_ratio(arm):
    """The median of |grad b| / |grad W| over every window of every ok seed; None where no
    seed is ok."""
    ratios = [b / w for bs, ws, verdict in zip(arm["bias_grad"], arm["weight_grad"],
                                               arm["outcome"]) if verdict == "ok"
              for b, w in zip(bs, ws)]
    return torch.tensor(ratios).median().item() if ratios else None


def table(results):
    """Per arm: test accuracy over its ok seeds (the others counted), the effect rule on it
    against the true gradient, the first seed's bias norm, and the ok seeds' median ratio of
    the bias's gradient to the weights'."""
    first_seed = results["provenance"]["seeds"][0]
    true = results["arms"]["true"]

    def ratio(arm):
        median = median_ratio(arm) if arm["bias_norm"] else None
        return "-" if median is None else f"{median:.2e}"

    return markdown_table(
        ["arm", "final test acc", "this - true", f"bias norm: initial / end (seed {first_seed})",
         "norm of grad b / of grad W (median)"],
        [(name, seeds_cell(arm["test_acc"], arm["outcome"]),
          "" if name == "true" else compare(true["test_acc"], arm["test_acc"], true["outcome"],
                                            arm["outcome"])[1],
          f"{arm['bias_norm_at_start'][0]:.3g} / {arm['bias_norm'][0][-1]:.3g}"
          if arm["bias_norm"] else "-", ratio(arm))
         for name, arm in results["arms"].items()])


def draw(results):
    """The figure from detach.json's numbers (also `experiments.py detach --redraw`): each
    seed a line of its own, a failed or diverged one dotted and ending in its marker."""
    fig, panels = panel_grid(4, height=3.2, extra=1.0)
    axes = [ax for ax, _ in panels]
    for name, arm in results["arms"].items():
        color, iters = COLORS[name], arm["iter"]
        for s, verdict in enumerate(arm["outcome"]):   # each seed
            first = s == 0
            style = dict(color=color, ls="-" if verdict == "ok" else ":")

            def line(ax, values, label):
                ax.plot(iters[:len(values)], values, **style, lw=0.7 if ax is axes[0] else 1.0,
                        label=label if first else None)
                if verdict != "ok" and values:
                    ax.plot(iters[len(values) - 1], values[-1],
                            "v" if verdict == "failed" else "x", color=color, ms=7)

            line(axes[0], arm["train_loss"][s], name)
            if arm["bias_norm"]:
                line(axes[1], arm["bias_norm"][s], f"{name}: biases before BN")
                line(axes[2], [b / w for b, w in zip(arm["bias_grad"][s], arm["weight_grad"][s])],
                     name)
            if any(arm["beta_grad"][s]):
                line(axes[3], arm["beta_grad"][s], name)
    axes[0].set(xlabel="iteration", ylabel="train loss (50-step window)",
                title="(a) training")
    axes[1].set(xlabel="iteration", ylabel="norm of the hidden layers' biases",
                title="(b) the bias before BN")
    axes[2].set(xlabel="iteration", ylabel="|grad bias| / |grad W|",
                title="(c) the gradient of the bias before BN")
    axes[3].set(xlabel="iteration", ylabel="|dL/dbeta|", title="(d) the gradient of beta")
    for ax in axes:
        plot.log_axis(ax)
        ax.grid(alpha=0.3)
    figure_legend(fig, axes[:1], ncols=4)
    fig.suptitle("Detached statistics (each line: a seed, dotted and marked v or x where it failed "
                 "or diverged;\nan arm without a bias, or with beta frozen, is absent where it "
                 "has nothing to draw)")
    return [fig]
