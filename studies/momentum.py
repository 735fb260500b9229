"""The momentum convention mix-up: the report's running-average momentum 0.9 (torch's 0.1)
against 0.1 in the report's convention (torch's 0.9), at batch 100 and batch 8."""
import matplotlib.pyplot as plt
import torch

import batchnorm
import mlp
from studies.common import accuracy, print_table

FIGURES = ("momentum_convention.png",)


def run(study):
    """The report's momentum 0.9 (torch's 0.1) against 0.1 in the report's convention."""
    sizes = [100, 8]
    last = 20 if study.quick else 200
    _, _, test_x, test_y = study.data
    results = {"last_steps": last, "runs": []}
    for size in sizes:
        for momentum in (0.9, 0.1):
            record = {"batch": size, "momentum": momentum, "step": [], "test_acc": [],
                      "running_mean": [], "batch_mean": []}
            config = study.config(batch_size=size, learning_rate=0.1 * size / 100, disp_freq=1)
            total_steps = len(study.data[0]) // size

            model = study.model(lambda: mlp.build_model("bn"))
            for layer in batchnorm.batchnorm_layers(model):
                layer.momentum = momentum
            first_bn, latest = batchnorm.batchnorm_layers(model)[0], {}

            def keep_batch_mean(layer, inputs):
                if layer.training:   # not during the evaluations below
                    latest["batch_mean"] = inputs[0][:, 0].mean().item()

            def on_window(iteration, model):
                if iteration > total_steps - last:
                    record["step"].append(iteration)
                    record["batch_mean"].append(latest["batch_mean"])
                    record["running_mean"].append(first_bn.running_mean[0].item())
                    record["test_acc"].append(accuracy(model, test_x, test_y))

            first_bn.register_forward_pre_hook(keep_batch_mean)
            study.fit(model, config, on_window=on_window)
            results["runs"].append(record)
            accs = record["test_acc"]
            study.progress("momentum", f"batch {size}, momentum {momentum} (ours)",
                           f"eval acc over last {last} steps {min(accs):.2%}..{max(accs):.2%}")

    fig, axes = plt.subplots(2, len(sizes), figsize=(12, 6.5), squeeze=False)
    for column, size in enumerate(sizes):
        for run_ in [r for r in results["runs"] if r["batch"] == size]:
            label = f"momentum {run_['momentum']} (torch: {1 - run_['momentum']:.1f})"
            color = "tab:blue" if run_["momentum"] == 0.9 else "tab:red"
            axes[0][column].plot(run_["step"], run_["test_acc"], color=color, label=label)
            axes[1][column].plot(run_["step"], run_["running_mean"], color=color,
                                 label=f"running mean, {label}")
            axes[1][column].plot(run_["step"], run_["batch_mean"], ".", color=color, ms=3,
                                 alpha=0.5, label=f"batch means, {label}")
        axes[0][column].set(title=f"batch {size}: eval-mode test accuracy, last {last} steps",
                            ylabel="test accuracy")
        axes[1][column].set(title=f"batch {size}: first BN layer, unit 0", xlabel="training step",
                            ylabel="mean of its input")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    print_table(["batch", "momentum (ours)", "eval acc: min", "max", "spread",
                 "running mean: std over the steps"],
                [(r["batch"], r["momentum"], f"{min(r['test_acc']):.4f}",
                  f"{max(r['test_acc']):.4f}", f"{max(r['test_acc']) - min(r['test_acc']):.4f}",
                  f"{torch.tensor(r['running_mean']).std().item():.4f}")
                 for r in results["runs"]])
    study.save("momentum", results, fig, FIGURES[0])
