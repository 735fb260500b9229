"""The BN paper's section 2: what goes wrong when the gradient ignores that mu_B and sigma_B^2
depend on the weights (`detach_stats=True`), seen in the bias before BN."""
import matplotlib.pyplot as plt
import torch
from torch import nn

import batchnorm
import mlp
from studies.common import print_table, show

FIGURES = ("detached_statistics.png",)


def norm(tensors):
    """The Euclidean norm of several tensors taken as one vector."""
    return sum(t.norm() ** 2 for t in tensors).sqrt().item()


def run(study):
    """mlp.py's network with biases before BN, trained with the true gradient and with
    detach_stats=True (mu_B, sigma_B^2 as constants); no weight decay, so nothing but the
    gradient moves the biases."""
    epochs = 1 if study.quick else 3
    config = study.config(max_epoch=epochs, weight_decay=0.0)
    results = {"epochs": epochs}
    for detach in (False, True):
        record = {"iter": [], "bias_norm": [], "weight_norm": [], "bias_grad": [],
                  "weight_grad": []}

        model = study.model(lambda: mlp.build_model("bn", bias=True))
        for layer in batchnorm.batchnorm_layers(model):
            layer.detach_stats = detach
        hidden = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
        record["bias_norm_at_start"] = norm(m.bias for m in hidden)

        def on_window(iteration, model):
            record["iter"].append(iteration)
            record["bias_norm"].append(norm(m.bias for m in hidden))
            record["weight_norm"].append(norm(m.weight for m in hidden))
            record["bias_grad"].append(norm(m.bias.grad for m in hidden))
            record["weight_grad"].append(norm(m.weight.grad for m in hidden))

        history, outcome = study.fit(model, config, on_window=on_window)
        record.update(outcome=outcome, test_acc=history["test"]["acc"],
                      train_loss=history["train"]["loss"])
        results["detached" if detach else "true"] = record
        acc = history["test"]["acc"][-1] if history["test"]["acc"] else None
        study.progress("detach", "detach_stats=True" if detach else "true gradient",
                       f"{show(outcome, acc)}, bias norm {record['bias_norm'][-1]:.3g}")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for key, color, label in (("true", "tab:blue", "true gradient"),
                              ("detached", "tab:red", "detach_stats=True")):
        r = results[key]
        axes[0].plot(r["iter"], r["train_loss"], color=color, lw=0.8, label=label)
        axes[1].plot(r["iter"], r["bias_norm"], color=color, label=f"{label}: biases before BN")
        axes[1].plot(r["iter"], r["weight_norm"], "--", color=color, label=f"{label}: weights")
        ratio = [b / w for b, w in zip(r["bias_grad"], r["weight_grad"])]
        axes[2].plot(r["iter"], ratio, color=color, label=label)
    axes[0].set(xlabel="iteration", ylabel="train loss (50-step window)", yscale="log",
                title="training")
    axes[1].set(xlabel="iteration", ylabel="norm", yscale="log",
                title="hidden layers' biases and weights")
    axes[2].set(xlabel="iteration", ylabel="|grad bias| / |grad W|", yscale="log",
                title="gradient of the bias before BN")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ratio = lambda r: torch.tensor(r["bias_grad"]).div(torch.tensor(r["weight_grad"])).median()
    print_table(["gradient", "final test acc", "bias norm: initial / end",
                 "|grad b| / |grad W| (median)"],
                [(key, f"{results[key]['test_acc'][-1]:.4f}" if results[key]["test_acc"] else "-",
                  f"{results[key]['bias_norm_at_start']:.3g} / {results[key]['bias_norm'][-1]:.3g}",
                  f"{ratio(results[key]):.2e}")
                 for key in ("true", "detached")])
    study.save("detach", results, fig, FIGURES[0])
