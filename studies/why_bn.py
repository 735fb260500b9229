"""What the three studies of "why BN helps, the 2018 answer" share (Santurkar, Tsipras, Ilyas,
Madry 2018, arXiv:1805.11604; studies/noisy.py, ics.py, smoothness.py): the two networks, the
training length, a hook that measures the model just before chosen training steps, on the very
batch of that step, and a curve over training drawn as its mean and range over seeds."""
import contextlib
import math

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch import nn

import cnn
import mlp
from studies.common import mean_and_range

NETWORKS = {"mlp": mlp.build_model, "cnn": cnn.build_model}   # build(norm), the report's two


def schedule(study):
    """study.config overrides: the report's recipe (study.config) for 3 epochs, measured every
    100 steps (disp_freq is also the measuring period); --quick: 2 epochs of batches of 20 on
    the slice, measured every 5 steps (a few dozen steps, seconds)."""
    if study.quick:
        return dict(max_epoch=2, batch_size=20, disp_freq=5)
    return dict(max_epoch=3, disp_freq=100)


def finite(value):
    """A float for the JSON: None where it is not finite (json would write a bare NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def spread(values):
    """"mean (min-max)" of per-seed numbers, for the tables; "-" where none is finite."""
    summary = mean_and_range(values)   # the studies' one mean-over-seeds, in 3 digits here
    if summary is None:
        return "-"
    mean, low, high = summary
    return f"{mean:.3g} ({low:.3g}-{high:.3g})"


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


class StepBatches:
    """The (images, labels) of each step of study.train(model, config, seed), drawn again as
    solver.train_one_epoch draws them: one torch.randperm per epoch from a generator seeded
    with `seed` (Study.fit), batches taken in order, the incomplete last one dropped. No random
    shifts: study.config sets augment_shift 0 (a shift would draw from the generator too)."""

    def __init__(self, data, batch_size, seed):
        self.images, self.labels = data[0], data[1]
        self.batch_size = batch_size
        self.steps_per_epoch = len(self.images) // batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.orders = []

    def batch(self, step):
        """Step `step`, counted from 1 as solver.py counts iterations."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        while len(self.orders) <= epoch:   # epochs in order: the generator's draws in order
            order = torch.randperm(len(self.images), generator=self.generator)
            self.orders.append(order.to(self.images.device))
        rows = self.orders[epoch][index * self.batch_size:(index + 1) * self.batch_size]
        return self.images.index_select(0, rows), self.labels.index_select(0, rows)


@contextlib.contextmanager
def before_steps(model, batches, every, measure):
    """While open, measure(step, optimizer, images, labels) runs just before the training
    optimizer's update of steps 1, every, 2 * every, ...: the model is still at the step's
    weights, each .grad holds the loss gradient of that step's batch, and (images, labels) is
    that batch (batches: a StepBatches of the same seed).

    torch's global step pre-hook reaches the optimizer that study.train makes and keeps to
    itself; the optimizer is the one holding `model`'s parameters (a copy that `measure` steps
    is skipped). The batch is checked against the one the model was last called on, so a
    measurement on the wrong batch stops the study rather than being recorded."""
    first = next(model.parameters())
    seen = {"step": 0, "input": None}

    def keep_input(module, inputs):
        seen["input"] = inputs[0]

    def hook(optimizer, args, kwargs):
        if optimizer.param_groups[0]["params"][0] is not first:
            return   # a copy of the optimizer, stepped inside `measure`
        seen["step"] += 1
        step = seen["step"]
        if step == 1 or step % every == 0:
            images, labels = batches.batch(step)
            if not torch.equal(images, seen["input"]):
                raise RuntimeError(f"step {step}: the batch drawn again is not the one trained on")
            with torch.enable_grad():
                measure(step, optimizer, images, labels)

    handles = [model.register_forward_pre_hook(keep_input),
               register_optimizer_step_pre_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def draw_band(ax, steps, per_seed, color, label, style="-"):
    """A curve over training: per_seed[s][k] is seed s's value at steps[s][k]. The mean over
    the seeds that have a finite value at a step as a line, their range as a band."""
    by_step = {}
    for seed_steps, values in zip(steps, per_seed):
        for step, value in zip(seed_steps, values):
            if value is not None and math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    xs = sorted(by_step)
    if not xs:
        return
    ax.plot(xs, [sum(by_step[x]) / len(by_step[x]) for x in xs], style, color=color,
            label=label, lw=1.2)
    if len(steps) > 1:
        ax.fill_between(xs, [min(by_step[x]) for x in xs], [max(by_step[x]) for x in xs],
                        color=color, alpha=0.18, lw=0)
