"""MLP 784-128-64-10 on MNIST, with or without Batch Normalization (the report's section 3.1).

    python mlp.py          # without BN (the report: 97.6%)
    python mlp.py --bn     # BN after each hidden linear layer (the report: 98.3%)
    python mlp.py --norm bn   # the same as --bn; --norm names the normalization layer

The linear layers have no bias, as in the report (109,184 parameters; 109,568 with BN):
with BN the bias would be redundant anyway, since BN subtracts the batch mean and adds beta.
"""
from torch import nn

import solver
from norms import norm_layers

# GroupNorm's group count (--norm gn): the 128 and 64 features in 8 groups of 16 and 8.
GN_GROUPS = 8

config = dict(solver.DEFAULTS)   # the report's recipe (and ours: see solver.DEFAULTS) as it is


def build_model(norm: str = "none") -> nn.Module:
    """norm: a name of norms.NORMALIZATIONS ("bn", "ln", "gn", "brn", "none")."""
    def hidden(n_in, n_out):
        # linear -> [norm] -> ReLU: the layer normalises the input of each nonlinearity,
        # as in the BN paper
        return [nn.Linear(n_in, n_out, bias=False),
                *norm_layers(norm, n_out, rank=2, groups=GN_GROUPS),
                nn.ReLU()]

    return nn.Sequential(
        nn.Flatten(),                 # (N, 1, 28, 28) -> (N, 784)
        *hidden(784, 128),
        *hidden(128, 64),
        nn.Linear(64, 10, bias=False),
    )


if __name__ == "__main__":
    solver.run("mlp", build_model, config)
