"""Learning-rate robustness: final test accuracy against a constant rate, with and without BN."""
from studies.common import draw_sweep, mlp_with, sweep

FIGURES = ("lr_robustness.png",)


def run(study):
    """Final test accuracy against a constant learning rate, the same budget for each."""
    rates = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    epochs = 3 if study.quick else 2   # quick: 3 passes over a slice, so the failures show
    make = lambda bn, lr: (study.model(mlp_with(bn)),
                           study.config(learning_rate=lr, max_epoch=epochs))
    results = {"rates": rates, "epochs": epochs, **sweep(study, "lr", "lr", rates, make)}
    fig = draw_sweep(results, "lr", "lr", "learning rate (constant)",
                     f"test accuracy after {epochs} epoch(s)",
                     "MLP 784-128-64-10: learning-rate robustness")
    study.save("lr", results, fig, FIGURES[0])
