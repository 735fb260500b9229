"""Learning-rate robustness: final test accuracy against a constant rate, with and without BN,
on a grid of rates 10^(1/4) apart, so that each failure edge is pinned to a factor of 1.8."""
import matplotlib.pyplot as plt

from studies.common import draw_sweep, mlp_with, provenance, sweep

FIGURES = ("lr_robustness.png",)
RATES = [float(f"{10 ** (k / 4):.3g}") for k in range(-8, 7)]   # 0.01 .. 31.6, 10^(1/4) apart
QUICK_RATES = [0.01, 0.1, 1.0, 10.0, 31.6]


def run(study):
    """Final test accuracy against a constant learning rate, the same budget for each."""
    rates = QUICK_RATES if study.quick else RATES
    epochs = 3 if study.quick else 2   # quick: 3 passes over a slice, so the failures show
    make = lambda bn, lr: (mlp_with(bn), study.config(learning_rate=lr, max_epoch=epochs))
    results = {"provenance": provenance(study.seeds), "rates": rates, "epochs": epochs,
               **sweep(study, "lr", "lr", rates, make)}
    study.save("lr", results, draw(results), FIGURES[0])


def draw(results):
    """The figure from lr.json's numbers (also `experiments.py lr --redraw`)."""
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    draw_sweep(ax, results, "lr", "learning rate (constant)",
               f"test accuracy after {results['epochs']} epoch(s)",
               "MLP 784-128-64-10: learning-rate robustness (band: range over seeds)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig
