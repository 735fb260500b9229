"""What the three studies of "why BN helps, the 2018 answer" share (Santurkar, Tsipras, Ilyas,
Madry 2018, arXiv:1805.11604; studies/noisy.py, ics.py, smoothness.py): the two networks, the
training length, the steps at which a study measures, and a curve over training drawn as its
mean and range over seeds."""
import math

from torch import nn

import cnn
import mlp
from studies.common import draw_over_seeds, first_images, mean_and_range

NETWORKS = {"mlp": mlp.build_model, "cnn": cnn.build_model}   # build(norm), the report's two


def schedule(study):
    """study.config overrides: the report's recipe (study.config) for 3 epochs, measured every
    100 steps (disp_freq is also the measuring period); --quick: one pass over training_data's
    100 images in batches of 10, measured every 3 steps (it only shows that the code runs)."""
    if study.quick:
        return dict(max_epoch=1, batch_size=10, disp_freq=3)
    return dict(max_epoch=3, disp_freq=100)


def training_data(study):
    """What the studies train and test on: study.data, or in --quick its first 100 training
    and 100 test images."""
    return first_images(study.data, 100, 100) if study.quick else study.data


def measured(step, every):
    """Whether a study measures at training step `step` (counted from 1, as solver.py counts
    iterations): steps 1, every, 2 * every, ..."""
    return step == 1 or step % every == 0


def finite(value):
    """A float for the JSON: None where it is not finite (json would write a bare NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def start_and_later(per_seed):
    """A measure over training, per seed: (its value at step 1, its median over the later
    measurements). Kept apart because at step 1 the untrained networks differ most."""
    def median(values):
        values = sorted(v for v in values if v is not None and math.isfinite(v))
        return values[len(values) // 2] if values else None
    return ([v[0] if v else None for v in per_seed], [median(v[1:]) for v in per_seed])


def weighted_layers(model):
    """The layers with weights (nn.Linear, nn.Conv2d), in the order the input meets them."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_name(layer):
    if isinstance(layer, nn.Conv2d):
        return f"conv {layer.in_channels}->{layer.out_channels}"
    return f"linear {layer.in_features}->{layer.out_features}"


def draw_band(ax, steps, per_seed, color, label, style="-"):
    """A curve over training: per_seed[s][k] is seed s's value at steps[s][k]. The mean over
    the seeds that have a finite value at a step as a line, their range as a band
    (common.draw_over_seeds, one step per x). Every seed counts, whatever its run's outcome:
    the outcome is the run's end, not its steps (noisy's legend says which runs failed)."""
    by_step = {}
    for seed_steps, values in zip(steps, per_seed):
        for step, value in zip(seed_steps, values):
            if value is not None and math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    xs = sorted(by_step)
    draw_over_seeds(ax, xs, [by_step[x] for x in xs], [["ok"] * len(by_step[x]) for x in xs],
                    color, label, fmt=style)
