"""The loss landscape along the gradient (Santurkar et al. 2018, section 3.2, appendix A.2.2,
Fig. 4): their answer to why BN helps is that it makes the loss and its gradient change less
along the step direction, so larger steps are safe. Step along the gradient by 1/2 to 4 times
the learning rate, at regular points of training: how much do the loss and the gradient vary,
with and without BN, on the report's MLP and CNN at the report's rate 0.1, and on the MLP at 0.2,
where it trains badly without BN?"""
import math

import torch
import torch.nn.functional as F
from matplotlib.lines import Line2D

import plot
from studies.common import ARMS, color, label, markdown_table, norm_of, panel_grid, preserved
from studies.why_bn import (NETWORKS, against, draw_band, finite, measured, ok_only,
                            schedule, start_and_later, tallied, training_data)

NAME = "smoothness"
QUESTION = "the loss along the gradient (Santurkar et al. 2018), with and without BN"
FIGURES = ("smoothness.png",)

STEP_FACTORS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)   # eta / learning rate, as S18's VGG
SETTINGS = (("mlp", 0.1), ("cnn", 0.1), ("mlp", 0.2))   # (network, constant rate)


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
    as S18 measure the training loss. The model is left exactly as it was (common.preserved:
    parameters, buffers, each module's mode; .grad is never written).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with preserved(model):
        model.train()
        weights = [p.detach().clone() for p in params]
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
    return {"loss": losses, "grad_distance": distances, "beta": max(ratios) if ratios else math.nan}


def train_measured(study, network, bn, lr, seed, config):
    """One seeded run at rate lr; before the update of steps 1, every, 2 * every, ... (every:
    config's disp_freq): along the gradient of the step's batch by eta = 0 and STEP_FACTORS * lr.
    Returns (outcome, test acc, record)."""
    model = study.model(lambda: NETWORKS[network](norm_of(bn)), seed)
    step_sizes = [0.0] + [f * lr for f in STEP_FACTORS]
    record = {"step": [], "loss": [], "loss_range": [], "grad_range": [], "beta": []}

    def on_step(step, model, optimizer, images, labels, loss):
        if not measured(step, config["disp_freq"]):
            return
        r = along_gradient(model, F.cross_entropy, images, labels, step_sizes)
        record["step"].append(step)
        record["loss"].append(finite(r["loss"][0]))
        # ranges over eta = 0 and the eight steps; the gradient's distance at eta = 0 is 0
        record["loss_range"].append(finite(max(r["loss"]) - min(r["loss"])))
        record["grad_range"].append(finite(max(r["grad_distance"]) - min(r["grad_distance"])))
        record["beta"].append(finite(r["beta"]))

    _, outcome, acc = study.train(model, dict(config, learning_rate=lr), seed, on_step=on_step,
                                  data=training_data(study))
    return outcome, acc, record


def trainings(study):
    """Each of SETTINGS without and with BN, at every seed."""
    return [{"network": network, "lr": lr, "arm": arm, "seed": seed}
            for network, lr in SETTINGS for arm in ARMS for seed in study.seeds]


def train_one(study, job):
    """One measured run along the gradient: its outcome and the measures over training."""
    outcome, acc, record = train_measured(study, job["network"], job["arm"] == "bn", job["lr"],
                                          job["seed"], study.config(**schedule(study)))
    return {"outcome": outcome, "test_acc": acc, **record}


def assemble(study, jobs, results):
    """Per setting, each arm's lists over seeds."""
    config = study.config(**schedule(study))
    settings = {}
    for job, result in zip(jobs, results):
        setting = settings.setdefault((job["network"], job["lr"]), {
            "network": job["network"], "learning_rate": job["lr"],
            **{arm: {key: [] for key in result} for arm in ARMS}})
        for key, value in result.items():
            setting[job["arm"]][key].append(value)
    return {"epochs": config["max_epoch"], "batch_size": config["batch_size"],
            "measure_every": config["disp_freq"], "step_factors": list(STEP_FACTORS),
            "settings": list(settings.values())}


MEASURES = (("loss_range", "loss range"), ("grad_range", "gradient range"), ("beta", "beta"))


def table(results):
    """Two tables. Per setting and arm, each measure at step 1 and later (median), mean (range)
    over the ok seeds. Then per setting the effect rule on with BN against without: the final
    test accuracy and each measure later, with each arm's ok seeds (the others counted)."""
    measures, compared = [], []
    for setting in results["settings"]:
        name = f"{setting['network']}, {setting['learning_rate']:g}"
        no_bn, bn = setting["no_bn"], setting["bn"]
        outcomes = (no_bn["outcome"], bn["outcome"])
        for key in ARMS:
            arm = setting[key]
            cells = []
            for measure, _ in MEASURES:
                first, later = start_and_later(arm[measure])
                cells.append(f"{ok_only(first, arm['outcome'])} / "
                             f"{ok_only(later, arm['outcome'])}")
            measures.append((name, tallied(label(key == "bn"), arm["outcome"]), *cells))
        compared.append((name, "final test acc",
                         *against(no_bn["test_acc"], bn["test_acc"], *outcomes, spec=".2%")))
        for measure, title in MEASURES:
            compared.append((name, f"{title} later",
                             *against(start_and_later(no_bn[measure])[1],
                                      start_and_later(bn[measure])[1], *outcomes)))
    return "\n".join([
        markdown_table(["network, lr", "arm", "loss range: step 1 / later (median)",
                        "gradient range: step 1 / later", "beta: step 1 / later"], measures),
        markdown_table(["network, lr", "measure", "without BN", "with BN",
                        "with BN - without BN"], compared)])


PANELS = (("loss_range", "loss range along the gradient", "(a) loss landscape"),
          ("grad_range", "range of ||grad L(w - eta g) - grad L(w)||",
           "(b) gradient predictiveness"),
          ("beta", "max ||grad change|| / ||eta g||", "(c) effective beta-smoothness"))


def slots(settings):
    """The panels in two columns, row-major: two settings side by side, a row per measure;
    a setting left over alone fills two rows, its last row's second slot None."""
    order = []
    for i in range(0, len(settings), 2):
        pair = settings[i:i + 2]
        if len(pair) == 2:
            order += [(setting, panel) for panel in PANELS for setting in pair]
        else:
            order += [(pair[0], panel) for panel in PANELS] + [None]
    return order


def draw(results):
    """Per setting: (a) loss range, (b) gradient predictiveness, (c) effective beta; two
    panels across (slots). A panel's own legend only where it has runs apart from the mean."""
    order = slots(results["settings"])
    fig, panels = panel_grid(len(order), height=2.8, extra=0.6 if None in order else 1.0)
    usual = {label(False), label(True)}
    blank = None
    for (ax, _), slot in zip(panels, order):
        if slot is None:
            ax.axis("off")
            blank = ax
            continue
        setting, (key, ylabel, title) = slot
        for bn in (False, True):
            arm = setting["bn" if bn else "no_bn"]
            draw_band(ax, arm["step"], arm[key], color(bn), label(bn),
                      outcomes=arm["outcome"])   # failed runs: lines of their own
        ax.set(xlabel="training step", ylabel=ylabel,
               title=f"{setting['network'].upper()}, lr {setting['learning_rate']:g}: {title}")
        plot.log_axis(ax)
        ax.grid(alpha=0.3)
        if set(ax.get_legend_handles_labels()[1]) - usual:
            ax.legend(fontsize=8.5, loc="best")
    lines = [Line2D([], [], color=color(bn), label=label(bn)) for bn in (False, True)]
    if blank is None:
        fig.legend(handles=lines, loc="outside lower center", ncols=2)
    else:   # the slot left blank holds the legend
        blank.legend(handles=lines, loc="center")
    fig.suptitle("Along the gradient by 1/2 to 4 times the learning rate (Santurkar et al. "
                 "2018, Fig. 4)\nline: mean over the ok seeds, band: their range; log scales")
    return [fig]
