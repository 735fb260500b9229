"""The loss landscape along the gradient (Santurkar et al. 2018, section 3.2, appendix A.2.2,
Fig. 4): their answer to why BN helps is that it makes the loss and its gradient change less
along the step direction, so larger steps are safe. Step along the gradient by 1/2 to 4 times
the learning rate, at regular points of training: how much do the loss and the gradient vary,
with and without BN, on the report's MLP and CNN?"""
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from studies.common import color, label, norm_of, print_table, provenance, show_seeds
from studies.why_bn import (NETWORKS, StepBatches, before_steps, draw_band, finite, schedule,
                            spread, start_and_later)

FIGURES = ("smoothness.png",)

STEP_FACTORS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)   # eta / learning rate, as S18's VGG
LARGER_RATES = (0.15, 0.2, 0.3, 0.5)   # tried on the MLP without BN, for a second rate


def total_norm(tensors):
    """The Euclidean norm of several tensors taken as one vector."""
    return math.sqrt(sum(t.double().square().sum().item() for t in tensors))


def along_gradient(model, loss_fn, inputs, targets, step_sizes):
    """The loss and its gradient at w - eta * g for each eta of step_sizes (S18, A.2.2).

    g is the gradient of loss_fn(model(inputs), targets) w.r.t. all trainable parameters w
    (torch.autograd.grad, taken at w). Returns {"loss": [L(w - eta g) per eta], "grad_distance":
    [||grad L(w - eta g) - grad L(w)|| per eta], "beta": max over the nonzero eta of
    grad_distance / ||eta g||, the effective beta-smoothness} (eta = 0 only where the caller
    passes it; beta is NaN when g is 0). Computed in training mode, BN with batch statistics,
    as S18 measure the training loss. The model is left exactly as it was: parameters, .grad
    (never written), buffers (BN running estimates, restored), each module's mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p.detach().clone() for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        g = torch.autograd.grad(loss_fn(model(inputs), targets), params)
        g_norm = total_norm(g)
        losses, distances = [], []
        for eta in step_sizes:
            with torch.no_grad():
                for p, w, g_p in zip(params, weights, g):
                    p.copy_(w - eta * g_p)
            loss = loss_fn(model(inputs), targets)
            moved = torch.autograd.grad(loss, params)
            losses.append(loss.item())
            distances.append(total_norm(a - b for a, b in zip(moved, g)))
        ratios = [d / (abs(eta) * g_norm) for eta, d in zip(step_sizes, distances)
                  if eta != 0 and g_norm > 0]
        beta = max(ratios) if ratios else math.nan
    finally:
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
            for b, saved in buffers:
                b.copy_(saved)
        for module, training in modes:
            module.training = training
    return {"loss": losses, "grad_distance": distances, "beta": beta}


def train_measured(study, network, bn, lr, seed, config):
    """One seeded run at rate lr; before steps 1, every, 2 * every, ...: along the gradient of
    the step's batch by eta = 0 and STEP_FACTORS * lr. Returns (outcome, test acc, record)."""
    model = study.model(lambda: NETWORKS[network](norm_of(bn)), seed)
    step_sizes = [0.0] + [f * lr for f in STEP_FACTORS]
    record = {"step": [], "loss": [], "loss_range": [], "grad_range": [], "beta": []}

    def on_step(step, optimizer, images, labels):
        r = along_gradient(model, F.cross_entropy, images, labels, step_sizes)
        record["step"].append(step)
        record["loss"].append(finite(r["loss"][0]))
        # ranges over eta = 0 and the eight steps; the gradient's distance at eta = 0 is 0
        record["loss_range"].append(finite(max(r["loss"]) - min(r["loss"])))
        record["grad_range"].append(finite(max(r["grad_distance"]) - min(r["grad_distance"])))
        record["beta"].append(finite(r["beta"]))

    batches = StepBatches(study.data, config["batch_size"], seed)
    with before_steps(model, batches, config["disp_freq"], on_step):
        _, outcome, acc = study.train(model, config, seed)
    return outcome, acc, record


def larger_rate(study, config):
    """The MLP without BN at each of LARGER_RATES (no measuring): the largest rate at which
    every seed's run is "ok", or None, and what each rate gave."""
    tried, chosen = {}, None
    for lr in LARGER_RATES:
        runs = [study.train(study.model(lambda: NETWORKS["mlp"]("none"), seed),
                            dict(config, learning_rate=lr), seed)[1:]
                for seed in study.seeds]
        tried[str(lr)] = {"outcome": [o for o, _ in runs], "test_acc": [a for _, a in runs]}
        study.progress("smoothness", f"mlp, without BN, lr {lr:g}",
                       f"{show_seeds(tried[str(lr)]['test_acc'])} {tried[str(lr)]['outcome']}")
        if all(o == "ok" for o, _ in runs):
            chosen = lr
    return chosen, tried


def run(study):
    """The MLP and the CNN at the report's 0.1, and the MLP at the largest of LARGER_RATES at
    which it still trains without BN; each with and without BN, over study.seeds."""
    config = study.config(**schedule(study))
    chosen, tried = larger_rate(study, config)
    settings = [("mlp", 0.1), ("cnn", 0.1)] + ([("mlp", chosen)] if chosen else [])
    results = {"provenance": provenance(study.seeds), "epochs": config["max_epoch"],
               "batch_size": config["batch_size"], "measure_every": config["disp_freq"],
               "step_factors": list(STEP_FACTORS),
               "larger_rate_probe": {"network": "mlp", "norm": "none", "rates": tried,
                                     "chosen": chosen},
               "settings": []}
    for network, lr in settings:
        setting = {"network": network, "learning_rate": lr}
        for bn in (False, True):
            arm = {"test_acc": [], "outcome": [], "step": [], "loss": [], "loss_range": [],
                   "grad_range": [], "beta": []}
            for seed in study.seeds:
                outcome, acc, record = train_measured(
                    study, network, bn, lr, seed, dict(config, learning_rate=lr))
                arm["test_acc"].append(acc)
                arm["outcome"].append(outcome)
                for key, values in record.items():
                    arm[key].append(values)
            setting["bn" if bn else "no_bn"] = arm
            study.progress("smoothness", f"{network}, lr {lr:g}, {label(bn)}",
                           f"{show_seeds(arm['test_acc'])} {arm['outcome']}")
        results["settings"].append(setting)

    rows = []
    for setting in results["settings"]:
        for key in ("no_bn", "bn"):
            arm = setting[key]
            cells = []
            for measure in ("loss_range", "grad_range", "beta"):
                first, later = start_and_later(arm[measure])
                cells.append(f"{spread(first)} / {spread(later)}")
            rows.append((f"{setting['network']}, {setting['learning_rate']:g}", key,
                         show_seeds(arm["test_acc"]), *cells))
    print_table(["network, lr", "arm", "final test acc", "loss range: step 1 / later (median)",
                 "gradient range: step 1 / later", "beta: step 1 / later"], rows)
    study.save("smoothness", results, draw(results), FIGURES[0])


def draw(results):
    """One row per setting: (a) loss range, (b) gradient predictiveness, (c) effective beta."""
    settings = results["settings"]
    fig, axes = plt.subplots(len(settings), 3, figsize=(15, 3.6 * len(settings)), squeeze=False)
    panels = (("loss_range", "loss range along the gradient", "(a) loss landscape"),
              ("grad_range", "range of ||grad L(w - eta g) - grad L(w)||",
               "(b) gradient predictiveness"),
              ("beta", "max ||grad change|| / ||eta g||", "(c) effective beta-smoothness"))
    for row, setting in zip(axes, settings):
        name = f"{setting['network'].upper()}, lr {setting['learning_rate']:g}"
        for ax, (key, ylabel, title) in zip(row, panels):
            for bn in (False, True):
                arm = setting["bn" if bn else "no_bn"]
                draw_band(ax, arm["step"], arm[key], color(bn), label(bn))
            ax.set(xlabel="training step", ylabel=f"{ylabel} (log)", yscale="log",
                   title=f"{name}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Along the gradient by 1/2 to 4 times the learning rate (Santurkar et al. "
                 "2018, Fig. 4): mean and range over seeds")
    return fig
