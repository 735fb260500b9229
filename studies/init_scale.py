"""Initialisation scale, as in CS231n's BN assignment: test accuracy after one epoch against the
scale s of every initial weight, with and without BN."""
from torch import nn

import mlp
from studies.common import draw_sweep, norm_of, sweep

FIGURES = ("init_scale.png",)


def scaled_init(bn, scale):
    """mlp.py's network with every linear weight drawn from N(0, scale^2) (CS231n's
    weight_scale)."""
    def build():
        model = mlp.build_model(norm_of(bn))
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, scale)
        return model
    return build


def run(study):
    """Test accuracy after one epoch against the initial weight scale s, with and without BN."""
    scales = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]
    make = lambda bn, scale: (study.model(scaled_init(bn, scale)), study.config())
    results = {"scales": scales, **sweep(study, "init", "scale", scales, make)}
    fig = draw_sweep(results, "scale", "s", "weight scale s: every weight ~ N(0, s^2)",
                     "test accuracy after one epoch",
                     "Initialisation scale (CS231n's experiment), MLP 784-128-64-10")
    study.save("init", results, fig, FIGURES[0])
