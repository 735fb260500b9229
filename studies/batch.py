"""Batch size: BN's eval mode against a forgotten model.eval() (each test batch's own statistics),
from batches of 2 to 512 images."""
import copy

import matplotlib.pyplot as plt
import torch

from studies.common import color, mlp_with, print_table

FIGURES = ("batch_size.png",)


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


def run(study):
    """Batch sizes 2..512, each seeing one epoch; the rate scaled linearly, 0.1 * B / 100."""
    sizes = [2, 4, 8, 16, 32, 64] if study.quick else [2, 4, 8, 32, 128, 512]
    results = {"sizes": sizes, "rule": "lr = 0.1 * batch / 100, one epoch", "rows": []}
    _, _, test_x, test_y = study.data
    for size in sizes:
        config = study.config(batch_size=size, learning_rate=0.1 * size / 100,
                              disp_freq=max(1, 5000 // size))
        row = {"batch": size}
        for bn in (True, False):
            model = study.model(mlp_with(bn))
            history, outcome = study.fit(model, config)
            final = history["test"]["acc"][-1] if outcome != "diverged" else None
            row["bn_eval" if bn else "no_bn"] = final
            if bn:
                row["bn_batch_stats"] = batch_statistics_accuracy(model, test_x, test_y, size)
        results["rows"].append(row)
        study.progress("batch", f"batch {size}, lr {config['learning_rate']:g}",
                       f"BN eval {row['bn_eval']:.2%}, batch stats {row['bn_batch_stats']:.2%}, "
                       f"no BN {row['no_bn']:.2%}")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = results["rows"]
    ax.plot(sizes, [r["bn_eval"] for r in rows], "o-", color=color(True),
            label="with BN, eval mode (running estimates)")
    ax.plot(sizes, [r["bn_batch_stats"] for r in rows], "s--", color="tab:green",
            label="with BN, statistics of each test batch (no model.eval())")
    ax.plot(sizes, [r["no_bn"] for r in rows], "^-", color=color(False), label="without BN")
    ax.set(xscale="log", xlabel="batch size (training and test)",
           ylabel="test accuracy after one epoch", title="Batch size, and the train/eval gap of BN")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    print_table(["batch", "lr", "BN, eval mode", "BN, batch statistics", "no BN"],
                [(r["batch"], f"{0.1 * r['batch'] / 100:g}", f"{r['bn_eval']:.4f}",
                  f"{r['bn_batch_stats']:.4f}", f"{r['no_bn']:.4f}") for r in rows])
    study.save("batch", results, fig, FIGURES[0])
