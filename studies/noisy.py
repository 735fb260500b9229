"""Noisy BN (Santurkar et al. 2018, section 2.1, appendix A.2.1, Algorithm 1): if BN helped by
keeping each layer's input distribution steady (the 2015 answer), BN followed by noise that
shifts and scales every unit's distribution afresh at every step should lose that help. Does
it, on the report's MLP and CNN? And the same noise without BN?"""
import matplotlib.pyplot as plt
import torch
from torch import nn

import solver
from batchnorm import BatchNorm
from studies.common import accuracy, print_table, provenance, show_seeds
from studies.why_bn import NETWORKS, draw_band, schedule, spread

FIGURES = ("noisy_bn.png",)

ARMS = {   # key -> (label, colour): one colour per arm
    "none": ("without normalization", "tab:orange"),
    "bn": ("BN", "tab:blue"),
    "bn_noise": ("BN + noise (noisy BN)", "tab:green"),
    "noise": ("noise alone, in BN's place", "tab:red"),
}


class BatchNoise(nn.Module):
    """S18's Algorithm 1: in training, a fresh random shift and scale of every unit's values.

    At every forward call in training mode, for every unit (channel) j of the input (N, C) or
    (N, C, H, W): mu_j ~ U(-n_mu, n_mu) and sigma_j ~ U(1, n_sigma); then for every value i of
    that unit (the batch, and height and width for convolutions), m_i ~ U(mu_j - r_mu,
    mu_j + r_mu) and s_i ~ N(sigma_j, r_sigma) (r_sigma a standard deviation), and
    a_i -> s_i * a_i + m_i. The paper's values are the defaults. The draws are constants for
    the gradient. Identity in eval mode. Draws come from `generator`, or torch's global
    generator (seeded by Study.model) when it is None: a seeded run is reproducible.
    """

    def __init__(self, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1, generator=None):
        super().__init__()
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.generator = generator

    def extra_repr(self):
        return (f"n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}")

    def forward(self, a):
        if not self.training:
            return a
        unit_shape = [1, a.shape[1]] + [1] * (a.dim() - 2)   # one mu_j, sigma_j per channel
        like = dict(device=a.device, dtype=a.dtype)
        draw = dict(generator=self.generator)
        mu = torch.empty(unit_shape, **like).uniform_(-self.n_mu, self.n_mu, **draw)
        sigma = torch.empty(unit_shape, **like).uniform_(1.0, self.n_sigma, **draw)
        m = mu + torch.empty(a.shape, **like).uniform_(-self.r_mu, self.r_mu, **draw)
        s = sigma + self.r_sigma * torch.randn(a.shape, **like, **draw)
        return s * a + m


def build_arm(network, arm):
    """One of ARMS on the report's `network` ("mlp" or "cnn").

    "bn_noise": BatchNoise after each BN layer of build_model("bn"); "noise": each BN layer of
    build_model("bn") swapped for BatchNoise. The bias rule stays that network's: the MLP's
    linear layers have no bias in every arm, the CNN's convolutions keep theirs. BN and
    BatchNoise draw nothing at construction, so under one seed all four arms start from the
    same weights."""
    build = NETWORKS[network]
    if arm in ("none", "bn"):
        return build(arm)
    layers = []
    for module in build("bn"):
        if not isinstance(module, BatchNorm):
            layers.append(module)
            continue
        if arm == "bn_noise":
            layers.append(module)
        layers.append(BatchNoise())
    return nn.Sequential(*layers)


def train_arm(study, network, arm, seed, config):
    """One seeded run: final (outcome, test acc), test accuracy over training (eval mode, the
    noise off) and the 15th/50th/85th percentiles of unit 0 of the first ReLU's input on the
    training batch in training mode (noise on), both every disp_freq steps."""
    model = study.model(lambda: build_arm(network, arm), seed)
    probe = solver.InputProbe(model)   # the first ReLU's input, unit 0
    curve = {"step": [], "test_acc": []}
    test_x, test_y = study.data[2], study.data[3]

    def on_window(iteration, model):
        probe.record_window(iteration)   # first: the evaluation below calls the model again
        curve["step"].append(iteration)
        curve["test_acc"].append(accuracy(model, test_x, test_y))

    _, outcome, acc = study.train(model, config, seed, on_window=on_window)
    return outcome, acc, curve, {p: probe.record[p] for p in ("p15", "p50", "p85")}


def median_jump(p50):
    """How unsteady a unit's input distribution is: the mean |change| of its median between
    consecutive measurements."""
    jumps = [abs(b - a) for a, b in zip(p50, p50[1:])]
    return sum(jumps) / len(jumps) if jumps else None


def run(study):
    """Four arms on the MLP and the CNN, each over study.seeds, the report's SGD at 0.1."""
    config = study.config(**schedule(study))
    results = {"provenance": provenance(study.seeds), "epochs": config["max_epoch"],
               "batch_size": config["batch_size"], "measure_every": config["disp_freq"],
               "learning_rate": config["learning_rate"],
               "noise": {"n_mu": 0.5, "n_sigma": 1.25, "r_mu": 0.1, "r_sigma": 0.1},
               "probe": "unit 0 of the first ReLU's input, training batch, training mode",
               "arms": {arm: name for arm, (name, _) in ARMS.items()}}
    for network in NETWORKS:
        results[network] = {}
        for arm in ARMS:
            record = {"test_acc": [], "outcome": [], "step": [], "test_acc_curve": [],
                      "p15": [], "p50": [], "p85": [], "median_jump": []}
            for seed in study.seeds:
                outcome, acc, curve, pct = train_arm(study, network, arm, seed, config)
                record["test_acc"].append(acc)
                record["outcome"].append(outcome)
                record["step"].append(curve["step"])
                record["test_acc_curve"].append(curve["test_acc"])
                for p in ("p15", "p50", "p85"):
                    record[p].append(pct[p])
                record["median_jump"].append(median_jump(pct["p50"]))
            results[network][arm] = record
            study.progress("noisy", f"{network}, {ARMS[arm][0]}",
                           f"{show_seeds(record['test_acc'])} {record['outcome']}")

    print_table(["network", "arm", "final test acc (mean, range)", "outcomes",
                 "median jump (mean, range)"],
                [(network, ARMS[arm][0], show_seeds(r["test_acc"]), " ".join(r["outcome"]),
                  spread(r["median_jump"]))
                 for network in NETWORKS for arm, r in results[network].items()])
    study.save("noisy", results, draw(results), FIGURES[0])


def draw(results):
    """Per network: test accuracy of the four arms over training; the first ReLU's input
    percentiles with BN and with noisy BN (the first seed: an average would hide the jumps)."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    seed = results["provenance"]["seeds"][0]
    for row, network in zip(axes, NETWORKS):
        lowest = 1.0
        for arm, (name, color) in ARMS.items():
            r = results[network][arm]
            failed = sum(o != "ok" for o in r["outcome"])
            if failed:   # the mean curve then mixes runs that learnt with runs that did not
                kinds = "/".join(sorted(set(r["outcome"]) - {"ok"}))
                name += f" ({failed} of {len(r['outcome'])} {kinds})"
            draw_band(row[0], r["step"], r["test_acc_curve"], color, name)
            lowest = min([lowest] + [a for curve in r["test_acc_curve"] for a in curve])
        row[0].set(xlabel="training step", ylabel="test accuracy (eval mode, noise off)",
                   title=f"{network.upper()}: test accuracy (mean and range over seeds)",
                   ylim=(max(0.0, int((lowest - 0.02) * 20) / 20), 1.0))
        row[0].legend(fontsize=8, loc="lower right", framealpha=0.7)
        for ax, arm, short in ((row[1], "bn", "BN"), (row[2], "bn_noise", "noisy BN")):
            r, color = results[network][arm], ARMS[arm][1]
            shown = {}
            for p, style, width in (("p85", ":", 2.2), ("p50", "-", 1.0), ("p15", "--", 1.0)):
                values = r[p][0]
                name = f"{p[1:]}th percentile"
                same = [q for q, other in shown.items()
                        if sum(abs(a - b) < 1e-6 for a, b in zip(values, other)) > len(values) / 2]
                if same:   # a conv unit's background pixels: many equal values
                    name += f" (mostly = {same[0][1:]}th)"
                shown[p] = values
                ax.plot(r["step"][0], values, style, color=color, lw=width, label=name)
            ax.set(xlabel="training step", ylabel="input of the first ReLU, unit 0",
                   title=f"{network.upper()}, {short}: on the training batch (seed {seed})")
        # one scale for both percentile panels, so their spreads compare at a glance
        shown = [v for a in ("bn", "bn_noise") for p in ("p15", "p85")
                 for v in results[network][a][p][0]] or [0.0]
        low, high = min(shown), max(shown)
        for ax in row[1:]:
            ax.set_ylim(low - 0.1 * (high - low) - 0.05, high + 0.6 * (high - low) + 0.05)
            ax.legend(fontsize=7.5, loc="upper right")
        for ax in row:
            ax.grid(alpha=0.3)
    fig.suptitle("Noisy BN (Santurkar et al. 2018, Algorithm 1): BN, then a fresh random shift "
                 "and scale of every unit at every step")
    return fig
