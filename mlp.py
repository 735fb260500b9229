"""MLP 784-128-64-10 on MNIST, with or without Batch Normalization (the report's section 3.1).

    python mlp.py          # without BN (the report: 97.6%)
    python mlp.py --bn     # BN after each hidden linear layer (the report: 98.3%)

The linear layers have no bias, as in the report (109,184 parameters; 109,568 with BN):
with BN the bias would be redundant anyway, since BN subtracts the batch mean and adds beta.
"""
from torch import nn

import solver
from batchnorm import BatchNorm1d

config = {
    "learning_rate": 0.1,
    "weight_decay": 0.0001,
    "momentum": 0.9,
    "batch_size": 100,
    "max_epoch": 100,
    "disp_freq": 50,
    # Not in the report (see solver.py); --plain gives its exact recipe.
    "lr_schedule": "cosine",
    "warmup_epochs": 0,
    "augment_shift": 0,
}


def build_model(bn: bool, bias: bool = False) -> nn.Module:
    """bias=True gives the hidden linear layers a bias (experiments.py's `detach` study)."""
    def hidden(n_in, n_out):
        # linear -> [BN] -> ReLU: BN normalises the input of each nonlinearity, as in the BN paper
        return [nn.Linear(n_in, n_out, bias=bias), *([BatchNorm1d(n_out)] if bn else []), nn.ReLU()]

    return nn.Sequential(
        nn.Flatten(),                 # (N, 1, 28, 28) -> (N, 784)
        *hidden(784, 128),
        *hidden(128, 64),
        nn.Linear(64, 10, bias=False),
    )


if __name__ == "__main__":
    solver.run("mlp", build_model, config, bn_default=False)
