"""The BN paper's Figure 1 (its section 4.1), redone: a 3 x 100 sigmoid network on binary MNIST,
(a) test accuracy over 50,000 steps with and without BN, (b, c) the 15th/50th/85th percentiles
of one last-layer sigmoid's input over training."""
import matplotlib.pyplot as plt
import torch
from torch import nn

import solver
from batchnorm import BatchNorm1d
from studies.common import accuracy, color, label, print_table, show

FIGURES = ("bn_paper_figure1.png",)


def figure1_network(bn):
    """The BN paper's section 4.1 network: 784 -> 3 x 100 sigmoid units -> 10, cross-entropy.

    With BN, a batchnorm.py layer normalises each W u before its sigmoid, and the bias is
    dropped (beta takes its place). Weights start N(0, 0.01^2), biases 0: our rule, fixed
    before the run (the paper says only "small random Gaussian values").
    """
    layers, n_in = [nn.Flatten()], 28 * 28
    for _ in range(3):
        layers += [nn.Linear(n_in, 100, bias=not bn), *([BatchNorm1d(100)] if bn else []),
                   nn.Sigmoid()]
        n_in = 100
    network = nn.Sequential(*layers, nn.Linear(100, 10))
    for module in network:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return network


def run(study):
    """Section 4.1: 50,000 steps of 60 binary images; plain SGD at the report's rate, 0.1."""
    train_x, train_y, test_x, test_y = study.data
    threshold = (0.5 - solver.MNIST_MEAN) / solver.MNIST_STD   # pixel >= 0.5 in [0, 1] terms
    binary = lambda images: (images >= threshold).float()     # "a 28x28 binary image"
    data = (binary(train_x), train_y, binary(test_x), test_y)
    steps, every = (60, 10) if study.quick else (50_000, 500)
    per_epoch = len(train_x) // 60
    config = study.config(batch_size=60, momentum=0.0, weight_decay=0.0, disp_freq=every,
                          max_epoch=-(-steps // per_epoch))   # whole epochs covering `steps`
    probe_images = data[2][:1000]
    results = {"rule": "plain SGD, lr 0.1, batch 60, weights N(0, 0.01^2), binary input",
               "steps": config["max_epoch"] * per_epoch, "unit": 0}
    for bn in (False, True):
        record = {"step": [], "test_acc": []}
        network = study.model(lambda: figure1_network(bn))
        last_sigmoid = [m for m in network if isinstance(m, nn.Sigmoid)][-1]
        probe = solver.InputProbe(network, unit=results["unit"], module=last_sigmoid,
                                  layer="input of the last sigmoid")

        def on_window(iteration, model):
            record["step"].append(iteration)
            record["test_acc"].append(accuracy(model, data[2], data[3]))
            model.eval()   # the last sigmoid's input over 1,000 fixed test images, as at inference
            with torch.no_grad():
                model(probe_images)
            probe.record_window(iteration)
            model.train()

        _, outcome = study.fit(network, config, on_window=on_window, data=data)
        percentiles = {key: probe.record[key] for key in ("p15", "p50", "p85")}
        results["bn" if bn else "no_bn"] = dict(record, **percentiles, outcome=outcome)
        study.progress("figure1", f"{label(bn)}, {results['steps']:,} steps",
                       show(outcome, record["test_acc"][-1] if record["test_acc"] else None))

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for bn, key in ((False, "no_bn"), (True, "bn")):
        axes[0].plot(results[key]["step"], results[key]["test_acc"], color=color(bn),
                     label=label(bn))
    axes[0].set(xlabel="training step", ylabel="test accuracy", title="(a) test accuracy",
                ylim=(0.7, 1.0))
    axes[0].legend()
    for ax, key, bn, title in ((axes[1], "no_bn", False, "(b) without BN"),
                               (axes[2], "bn", True, "(c) with BN")):
        for p, style in (("p85", ":"), ("p50", "-"), ("p15", "--")):
            ax.plot(results[key]["step"], results[key][p], style, color=color(bn),
                    label=f"{p[1:]}th percentile")
        ax.set(xlabel="training step", ylabel="input of a last-layer sigmoid", title=title)
        ax.legend(fontsize=7, framealpha=0.6,
                  loc="upper right" if key == "no_bn" else "center right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("The BN paper's Figure 1, redone: 3 x 100 sigmoid units, batches of 60")
    print_table(["network", "final test acc", "p15 / p50 / p85 at the end"],
                [(key, f"{results[key]['test_acc'][-1]:.4f}",
                  " / ".join(f"{results[key][p][-1]:+.2f}" for p in ("p15", "p50", "p85")))
                 for key in ("no_bn", "bn") if results[key]["test_acc"]])
    study.save("figure1", results, fig, FIGURES[0])
