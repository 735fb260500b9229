"""Scale invariance, measured (van Laarhoven 2017, arXiv:1706.05350; Arora, Li, Lyu 2018,
arXiv:1812.03981). A layer followed by BN gives the same output for weights cW (c > 0) as for W,
up to BN's eps: x, mu_B and sigma_B scale by c alike. So the loss does not change along W, its
gradient is orthogonal to W, and it is divided by c when W is multiplied by c. An SGD step of
size eta then turns W by about eta / |W|^2 (the effective learning rate): without weight decay
each step lengthens W (an orthogonal step adds to its norm), the effective rate falls as training
goes on; weight decay shrinks W and holds the effective rate up.

(a) The invariance, on the report's MLP with BN (mlp.py), in float32 on a fixed batch of training
images in training mode (batch statistics), at the start and the end of every training: for each
layer that BN follows and c in SCALES, the largest change of the logits relative to their
largest value, and the relative error of c times the scaled layer's weight gradient against the
original's; with the model's eps and with eps = 0 (float32 rounding alone); and the cosine of the
gradient with W. test_scale.py checks the exact relations in float64.

(b) The MLP with BN trained with weight decay 1e-4 (the report's) and 0: each BN-preceded
layer's |W| and its effective step |dW| / |W| (dW: the step's whole update, momentum and weight
decay included) over training, and the final test accuracy."""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import mlp
from batchnorm import BatchNorm, batchnorm_layers
from studies.common import (compare, first_images, markdown_table, ok_values, preserved, seeds_cell,
                            show_seeds)
from studies.why_bn import draw_band, finite, layer_name

NAME = "scale"
QUESTION = "scale invariance: weight norms and effective steps with and without weight decay"
FIGURES = ("scale_invariance.png",)
WEIGHT_DECAYS = (1e-4, 0.0)   # the report's, and none
SCALES = (0.1, 10.0)          # the factors c of the invariance check
PROBE_IMAGES = 500            # the fixed batch of the invariance check: the first training images
COLORS = {1e-4: "tab:blue", 0.0: "tab:red"}
STYLES = ("-", "--")          # per BN-preceded layer, in the network's order


def settings(study):
    """(epochs, data, config overrides): 6 epochs of the report's recipe at a constant rate
    (10 trainings of the MLP: placement's 20 x 3 epochs in trainings x epochs, a third of its
    time, since half of placement's are the slower CNN), measured in windows of 100 steps (36
    points); quick: one pass over 300 training images in batches of 10, windows of 5 steps, 200
    test images."""
    if study.quick:
        return 1, first_images(study.data, 300, 200), dict(batch_size=10, disp_freq=5)
    return 6, study.data, dict(disp_freq=100)


def decay_text(weight_decay):
    """"1e-4", "0": a weight decay as the tables and legends write it."""
    return f"{weight_decay:.0e}".replace("e-0", "e-") if weight_decay else "0"


def wd_label(weight_decay):
    return f"weight decay {decay_text(weight_decay)}"


def bn_preceded(model):
    """The layers whose output goes straight into BN (in mlp.py: the two hidden linear layers),
    in the network's order."""
    modules = list(model.modules())
    return [layer for layer, after in zip(modules, modules[1:])
            if isinstance(after, BatchNorm) and hasattr(layer, "weight")]


# ----------------------------------------------------------------------------- (a) invariance

def logits_and_grads(model, layers, images, labels):
    """The logits on `images` and the gradients of the cross-entropy for the layers' weights
    (autograd.grad: no .grad is touched)."""
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    return logits.detach(), torch.autograd.grad(loss, [layer.weight for layer in layers])


@torch.no_grad()
def pre_bn_variances(model, layers, images):
    """Per layer, the biased variance over `images` of each of its outputs (BN's sigma_B^2), in
    the model's current mode (in training mode the forward moves BN's running estimates: call it
    inside common.preserved)."""
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, out: seen.append(out)) for layer in layers]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [out.var(dim=0, unbiased=False) for out in seen]


def invariance(model, images, labels, eps_values=None):
    """For each eps (default: the model's own, then 0), each BN-preceded layer and each c in
    SCALES, a row {"eps", "layer", "c", "output", "grad", "eps_effect", "cos"}:
      output      max |logits(cW) - logits(W)| / max |logits(W)|
      grad        |c grad(cW) - grad(W)| / |grad(W)| for the scaled layer (Euclidean norms)
      eps_effect  what eps alone predicts: the largest relative change of x_hat in the BN after
                  the scaled layer, max over its units of |c sqrt(var + eps) / sqrt(c^2 var +
                  eps) - 1| (0 for eps = 0)
      cos         |cos(W, grad W)| of the layer, unscaled
    In training mode (batch statistics) on `images`, in their dtype; the model is left exactly
    as it was, its eps included."""
    layers, norms = bn_preceded(model), batchnorm_layers(model)
    own_eps = [bn.eps for bn in norms]
    rows = []
    try:
        with preserved(model):
            model.train()
            for eps in eps_values or (own_eps[0], 0.0):
                for bn in norms:
                    bn.eps = eps
                logits, grads = logits_and_grads(model, layers, images, labels)
                variances = pre_bn_variances(model, layers, images)
                for index, (layer, grad) in enumerate(zip(layers, grads)):
                    weight = layer.weight.detach().clone()
                    cos = (weight * grad).sum().abs() / (weight.norm() * grad.norm())
                    for c in SCALES:
                        var = variances[index]
                        by_eps = (c * (var + eps).sqrt() / (c * c * var + eps).sqrt() - 1).abs()
                        by_eps = by_eps.max() if eps else 0.0   # eps = 0: none, exactly
                        with torch.no_grad():
                            layer.weight.mul_(c)
                        scaled_logits, scaled_grads = logits_and_grads(model, layers, images,
                                                                       labels)
                        with torch.no_grad():
                            layer.weight.copy_(weight)
                        rows.append({
                            "eps": eps, "layer": index, "c": c,
                            "output": finite((scaled_logits - logits).abs().max()
                                             / logits.abs().max()),
                            "grad": finite((c * scaled_grads[index] - grad).norm() / grad.norm()),
                            "eps_effect": finite(by_eps), "cos": finite(cos)})
    finally:
        for bn, eps in zip(norms, own_eps):
            bn.eps = eps
    return rows


# ----------------------------------------------------------------------------- (b) training

class StepWatch:
    """on_step's watcher of the BN-preceded layers: every step, the update the previous step made
    (W now minus W then: momentum and weight decay included) relative to W then; per window of
    `every` steps, |W| at its end and the mean of those ratios over its steps."""

    def __init__(self, layers, every):
        self.layers, self.every = layers, every
        self.previous, self.sums, self.count = None, None, 0
        self.step = []   # the last step of each window
        self.weight_norm, self.effective_step = [[] for _ in layers], [[] for _ in layers]
        self.start = [finite(layer.weight.detach().norm()) for layer in layers]

    @torch.no_grad()
    def __call__(self, iteration, *_):
        """At step `iteration`, before its update: the weights are those step iteration - 1
        left."""
        weights = [layer.weight.detach() for layer in self.layers]
        if self.previous is not None:
            ratios = torch.stack([(w - p).norm() / p.norm()
                                  for w, p in zip(weights, self.previous)])
            self.sums = ratios if self.sums is None else self.sums + ratios
            self.count += 1
            done = iteration - 1   # the step whose update this was
            if done % self.every == 0:
                self.step.append(done)
                for k, (w, mean) in enumerate(zip(weights, self.sums / self.count)):
                    self.weight_norm[k].append(finite(w.norm()))
                    self.effective_step[k].append(finite(mean))
                self.sums, self.count = None, 0
        self.previous = [w.clone() for w in weights]

    def record(self):
        return {"step": self.step, "weight_norm_at_start": self.start,
                "weight_norm": self.weight_norm, "effective_step": self.effective_step}


def trainings(study):
    """Each weight decay at every seed; the invariance check is measured within each."""
    return [{"weight_decay": wd, "seed": seed} for wd in WEIGHT_DECAYS for seed in study.seeds]


def train_one(study, job):
    """mlp.py's network with BN for the study's epochs at the report's SGD (lr 0.1, momentum 0.9,
    batch 100, constant rate) with the job's weight decay; the invariance check before and after
    training."""
    epochs, data, overrides = settings(study)
    config = study.config(max_epoch=epochs, weight_decay=job["weight_decay"], **overrides)
    model = study.model(lambda: mlp.build_model("bn"), job["seed"])
    probe = data[0][:PROBE_IMAGES], data[1][:PROBE_IMAGES]
    layers = bn_preceded(model)
    at_start = invariance(model, *probe)
    watch = StepWatch(layers, config["disp_freq"])
    history, verdict, acc = study.train(model, config, job["seed"], on_step=watch, data=data)
    steps = len(data[0]) // config["batch_size"] * epochs
    if verdict != "diverged":
        watch(steps + 1)   # the last step's update
    return {"test_acc": acc, "outcome": verdict, "layers": [layer_name(m) for m in layers],
            **watch.record(), "test_acc_per_epoch": history["test"]["acc"],
            "invariance": {"start": at_start,
                           "end": None if verdict == "diverged" else invariance(model, *probe)}}


def assemble(study, jobs, results):
    """Per weight decay, each number as a list over seeds; the invariance check's rows, each
    with its weight decay, seed and time (start or end of training), in `invariance`."""
    arms = {wd_label(wd): {"weight_decay": wd, "test_acc": [], "outcome": [], "step": [],
                           "weight_norm_at_start": [], "weight_norm": [], "effective_step": [],
                           "test_acc_per_epoch": []} for wd in WEIGHT_DECAYS}
    checks, layers = [], None
    for job, result in zip(jobs, results):
        arm = arms[wd_label(job["weight_decay"])]
        for key in arm:
            if key != "weight_decay":
                arm[key].append(result[key])
        layers = result["layers"]
        for when, rows in result["invariance"].items():
            checks += [{"weight_decay": job["weight_decay"], "seed": job["seed"], "when": when,
                        **row} for row in rows or ()]
    epochs, data, overrides = settings(study)
    return {"epochs": epochs, "window": overrides["disp_freq"], "layers": layers,
            "scales": list(SCALES), "probe_images": min(PROBE_IMAGES, len(data[0])),
            "rule": f"mlp.py with BN, SGD lr 0.1 constant, momentum 0.9, batch "
                    f"{overrides.get('batch_size', 100)}, {epochs} epochs; |W| and the mean "
                    f"|dW|/|W| per window of {overrides['disp_freq']} steps",
            "arms": arms, "invariance": checks}


# ----------------------------------------------------------------------------- table, figure

def per_layer(arm, key, k, pick):
    """Seed by seed, pick(list over windows) of layer k's `key` (None where a run has none)."""
    return [pick(runs[k]) if runs[k] else None for runs in arm[key]]


def mean_of(values, spec, outcomes):
    """The mean over the ok seeds alone (at the start the seeds hardly differ: no range)."""
    kept = ok_values(values, outcomes)
    return f"{sum(kept) / len(kept):{spec}}" if kept else "-"


def largest(checks, **where):
    """The largest value of each of output, grad, eps_effect and cos among the invariance rows
    that match `where`, as short text ("0" where it is 0)."""
    rows = [row for row in checks if all(row[key] == value for key, value in where.items())]

    def top(key):
        values = [row[key] for row in rows if row[key] is not None]
        if not values:
            return "-"
        return f"{max(values):.1e}" if max(values) else "0"
    return top("output"), top("grad"), top("eps_effect"), top("cos")


def table(results):
    """(b): per weight decay the final test accuracy (the seeds that are not ok counted there)
    and, per BN-preceded layer over the ok seeds, |W| at the start (mean) and the end, the
    effective step |dW|/|W| (mean over a window) in the first (mean) and the last window; the
    effect rule on no decay - the report's decay at the end. (a): the invariance check's largest
    deviations over every seed, layer and time, with the model's eps and with eps = 0."""
    arms = list(results["arms"].values())
    layers = results["layers"]
    header = ["weight decay", "final test acc"]
    header += [f"‖W‖ {name}: start → end" for name in layers]
    header += [f"‖ΔW‖/‖W‖ {name}: first → last {results['window']} steps" for name in layers]

    def row(arm):
        cells = [decay_text(arm["weight_decay"]), seeds_cell(arm["test_acc"], arm["outcome"])]
        for key in ("weight_norm", "effective_step"):
            for k in range(len(layers)):
                first = ([start[k] for start in arm["weight_norm_at_start"]]
                         if key == "weight_norm" else per_layer(arm, key, k, lambda v: v[0]))
                last = per_layer(arm, key, k, lambda v: v[-1])
                cells.append(f"{mean_of(first, '.3g', arm['outcome'])} → "
                             f"{show_seeds(ok_values(last, arm['outcome']), '.3g')}")
        return cells

    decay, none = arms   # WEIGHT_DECAYS' order: the report's decay, then none
    effect = [f"{decay_text(none['weight_decay'])} − {decay_text(decay['weight_decay'])} "
              "(at the end)",
              compare(decay["test_acc"], none["test_acc"], decay["outcome"], none["outcome"])[1]]
    for key, decimals in (("weight_norm", 2), ("effective_step", 5)):
        for k in range(len(layers)):
            effect.append(compare(per_layer(decay, key, k, lambda v: v[-1]),
                                  per_layer(none, key, k, lambda v: v[-1]), decay["outcome"],
                                  none["outcome"], scale=1, decimals=decimals, unit="")[1])
    training = markdown_table(header, [row(decay), row(none), effect])

    checks = results["invariance"]
    eps_values = sorted({row["eps"] for row in checks}, reverse=True)
    scales = results["scales"]
    header = ["ε in BN"] + [f"c = {c:g}: {what}" for c in scales
                            for what in ("logits", "c·∇W", "ε's x̂")]
    header += ["cos(W, ∇W)"]
    rows = []
    for eps in eps_values:
        cells = [f"{eps:g}" + (" (the model's)" if eps else " (float32 rounding)")]
        for c in scales:
            cells += largest(checks, eps=eps, c=c)[:3]
        rows.append(cells + [largest(checks, eps=eps)[3]])
    check = markdown_table(header, rows)
    return (training + "\n" + check + f"\n*W → cW for each of {', '.join(layers)}, on "
            f"{results['probe_images']} training images in training mode, float32, at the start "
            f"and the end of every training; the largest relative change of the logits (max "
            f"|change| / max |logit|) and of c·∇W (‖c·∇W at cW − ∇W at W‖ / ‖∇W at W‖), what ε "
            f"alone predicts for x̂ (max over units of |c·√(σ² + ε) / √(c²σ² + ε) − 1|), and "
            f"|cos(W, ∇W)|.*\n")


def draw(results):
    """The figure from scale.json's numbers (also `experiments.py scale --redraw`): per weight
    decay and BN-preceded layer, |W| and the effective step over training, mean and range over
    the ok seeds, each failed or diverged run on its own."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4))
    for arm in results["arms"].values():
        wd = arm["weight_decay"]
        for k, name in enumerate(results["layers"]):
            label = f"{wd_label(wd)}, {name}"
            steps = [[0] + s for s in arm["step"]]
            norms = [[start[k]] + runs[k] for start, runs in
                     zip(arm["weight_norm_at_start"], arm["weight_norm"])]
            draw_band(axes[0], steps, norms, COLORS[wd], label, style=STYLES[k],
                      outcomes=arm["outcome"])
            draw_band(axes[1], arm["step"], [runs[k] for runs in arm["effective_step"]],
                      COLORS[wd], label, style=STYLES[k], outcomes=arm["outcome"])
    axes[0].set(title="weight norm ‖W‖ of each layer before BN", xlabel="step", ylabel="‖W‖")
    axes[0].ticklabel_format(useOffset=False)
    axes[1].set(title=f"effective step ‖ΔW‖ / ‖W‖ (mean over {results['window']} steps)",
                xlabel="step", ylabel="‖ΔW‖ / ‖W‖", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(f"Scale invariance: the MLP with BN, SGD lr 0.1, momentum 0.9, "
                 f"{results['epochs']} epochs; band: range over the ok seeds")
    return [fig]
