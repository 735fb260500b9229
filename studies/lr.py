"""Learning-rate robustness: final test accuracy against a constant rate, with and without BN,
on a grid of rates 10^(1/4) apart, so that each failure edge is pinned to a factor of 1.8."""
from studies.common import (draw_sweep, failure_rows, mlp_with, panel_grid, strip_note,
                            sweep_assemble, sweep_failures, sweep_table, sweep_train_one,
                            sweep_trainings)

NAME = "lr"
QUESTION = "learning-rate robustness, with and without BN"
FIGURES = ("lr_robustness.png",)
RATES = [float(f"{10 ** (k / 4):.3g}") for k in range(-8, 7)]   # 0.01 .. 31.6, 10^(1/4) apart
QUICK_RATES = [0.1, 1.0, 31.6]   # quick: one rate where both train, one each arm fails


def settings(study):
    """(rates, epochs); quick: 3 passes over the slice, so that the failures show."""
    return (QUICK_RATES, 3) if study.quick else (RATES, 2)


def trainings(study):
    return sweep_trainings(study, "lr", settings(study)[0])


def train_one(study, job):
    """The MLP at a constant rate job["lr"] for the study's epochs, the same budget for each."""
    epochs = settings(study)[1]
    make = lambda bn, job: (mlp_with(bn), study.config(learning_rate=job["lr"], max_epoch=epochs))
    return sweep_train_one(study, job, make)


def assemble(study, jobs, results):
    rates, epochs = settings(study)
    return {"rates": rates, "epochs": epochs, **sweep_assemble(jobs, results, "lr")}


def table(results):
    return sweep_table(results, "lr")


def draw(results):
    """The figure from lr.json's numbers (also `experiments.py lr --redraw`)."""
    rows = len(failure_rows(sweep_failures(results, "lr")))
    fig, [(ax, strip)] = panel_grid(1, [rows], cols=1, height=3.6)
    draw_sweep(ax, strip, results, "lr", "learning rate (constant)",
               f"test accuracy after {results['epochs']} epoch(s)",
               strip_note(len(results["bn"][0]["outcome"])))
    ax.legend(loc="lower left")
    fig.suptitle("MLP 784-128-64-10: learning-rate robustness")
    return [fig]
