"""BN's relatives, built from batchnorm.py's pieces: what to use when BN's batch statistics fail.

LayerNorm and GroupNorm normalise each sample over its own values, by BatchNormFunction's
formula and hand-derived backward applied to other axes (`normalize_groups`); Batch
Renormalization is a BatchNorm whose training output is corrected towards evaluation's. Last,
the normalization layers by the name that `--norm` and history.json use (NORMALIZATIONS,
norm_layers), BN ("bn") included.
"""
import torch
from torch import nn

from batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormFunction, stat_shape_and_dims

# ----------------------------------------------------------------------------- LN, GN

def normalize_groups(x, num_groups, eps=1e-5):
    """x_hat of group normalization for input (N, C, ...), by BN's own formula and backward.

    Per sample n and group g of C/G contiguous channels, over the M = (C/G) * H * W values the
    group holds (M = C/G for input (N, C)):
        mu_ng      = (1/M) * sum(x)
        sigma_ng^2 = (1/M) * sum((x - mu_ng)^2)          biased, as eq. 2.1 and torch
        x_hat      = (x - mu_ng) / sqrt(sigma_ng^2 + eps)
    That is eq. 2.1 with gamma = 1, beta = 0 over other values: x reshaped to (1, N*G, M) makes
    each (sample, group) one channel (dim 1) of BatchNormFunction, which reduces over dims 0
    and 2, so the hand-derived backward applies unchanged with m = M. A batch of one is fine:
    the statistics never cross samples. (With M = 1, e.g. G = C on input (N, C), x_hat = 0,
    as in torch.)
    """
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(1, n * num_groups, -1)
    # Unit gamma, zero beta, no gradient wanted: the layer's per-channel gamma, beta act after.
    unit, zero = flat.new_ones(n * num_groups), flat.new_zeros(n * num_groups)
    x_hat, _mean, _var = BatchNormFunction.apply(flat, unit, zero, eps)
    return x_hat.view(x.shape)


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018) of input (N, C) or (N, C, H, W).

    Each sample's C channels are split into G = num_groups contiguous groups of C/G channels,
    and each group normalised over its own channels and H, W (`normalize_groups`), then
        GN(x) = gamma * x_hat + beta                    gamma, beta per channel
    No running estimates: nothing depends on the rest of the batch, so training and evaluation
    are one computation and a batch of one works. Equals torch.nn.GroupNorm(G, C).

    Backward: x_hat's is BatchNormFunction's closed form (see normalize_groups); the affine map
    after it is left to autograd: dL/dgamma = sum_{n,h,w}(g * x_hat), dL/dbeta = sum_{n,h,w}(g).
    """

    input_layouts = {2: "(N, C)", 4: "(N, C, H, W)"}

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        name = type(self).__name__
        if num_groups < 1:
            raise ValueError(f"{name} needs num_groups >= 1, got {num_groups}")
        if num_channels % num_groups != 0:
            raise ValueError(f"{name}: num_channels ({num_channels}) is not divisible by "
                             f"num_groups ({num_groups}); each group needs C/G channels")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))    # gamma
        self.bias = nn.Parameter(torch.zeros(num_channels))     # beta

    def _args(self):
        return f"{self.num_groups}, {self.num_channels}"

    def extra_repr(self):
        return f"{self._args()}, eps={self.eps}"

    def _check_input(self, x):
        name = f"{type(self).__name__}({self._args()})"
        if x.dim() not in self.input_layouts:
            raise ValueError(f"{name} expects a 2-D input (N, C) or a 4-D input (N, C, H, W), "
                             f"got a {x.dim()}-D input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"{name} expects {self.num_channels} channels in dim 1, got input "
                             f"of shape {tuple(x.shape)}")

    def forward(self, x):
        self._check_input(x)
        stat_shape, _ = stat_shape_and_dims(x)   # (1, C, 1, ...): gamma, beta per channel
        x_hat = normalize_groups(x, self.num_groups, self.eps)
        return x_hat * self.weight.view(stat_shape) + self.bias.view(stat_shape)


class LayerNorm(GroupNorm):
    """Layer normalization (Ba, Kiros & Hinton 2016): GroupNorm with one group.

    Each sample is normalised over all its own values, C of them for input (N, C), C*H*W for
    input (N, C, H, W):
        LN(x) = gamma * (x - mu_n) / sqrt(sigma_n^2 + eps) + beta,   gamma, beta per channel
    with mu_n, sigma_n^2 (biased) the sample's mean and variance. For (N, C) this equals
    torch.nn.LayerNorm(C); for (N, C, H, W) torch.nn.GroupNorm(1, C) (torch's LayerNorm would
    take gamma, beta per value of (C, H, W), not per channel). Same in training and evaluation.
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__(1, num_features, eps)
        self.num_features = num_features

    def _args(self):
        return f"{self.num_features}"


# ----------------------------------------------------------------------------- Batch Renorm

# Batch Renormalization's warm-up in the paper (Ioffe 2017, section 4.1): r_max = 1, d_max = 0
# for the first 5k steps, then relaxed linearly to its final value, r_max by step 40k and d_max
# by step 25k. As BatchRenorm's `warmup`: (start, r_full, d_full).
PAPER_WARMUP = (5000, 40000, 25000)


class BatchRenorm(BatchNorm):
    """Batch Renormalization (Ioffe 2017, arXiv:1702.03275): BN whose training output is
    corrected towards what evaluation would give, for small or non-i.i.d. batches.

    With s_B = sqrt(sigma_B^2 + eps) the batch's standard deviation and s = sqrt(running_var +
    eps) the running one, training computes, per channel,
        x_hat = (x - mu_B) / s_B                               as eq. 2.1
        r     = clip(s_B / s, 1 / r_max, r_max)
        d     = clip((mu_B - running_mean) / s, -d_max, d_max)
        y     = gamma * (x_hat * r + d) + beta
    with running_mean, running_var as they were before this step's update. Without clipping,
    x_hat * r + d = (x - running_mean) / s: evaluation's normalization. r and d are constants
    for the gradient, so
        dL/dx     = BN's closed form with gamma * r in place of gamma
        dL/dgamma = sum(g * (r * x_hat + d)),   dL/dbeta = sum(g)
    With r_max = 1, d_max = 0 the layer is BN exactly.

    Running estimates and evaluation are BN's (eq. 2.2 with its m/(m-1), momentum 0.9 in the
    report's convention), so fold_batchnorm, recalibrate and eval_scale_and_shift apply as they
    are. A deliberate difference from the paper, which keeps a moving average of the standard
    deviation sigma_B rather than of the variance.

    r_max and d_max (defaults 3 and 5, the paper's final values) are plain attributes, used as
    set at each step. warmup=(start, r_full, d_full), off (None) by default, relaxes them as
    the paper does, from the number t of training steps taken before this one (BatchNorm's
    int64 buffer `num_batches_tracked`, saved in state_dict, so a resumed run continues exactly):
        r_max(t) = 1 + (r_max - 1) * clip((t - start) / (r_full - start), 0, 1)
        d_max(t) =      d_max      * clip((t - start) / (d_full - start), 0, 1)
    i.e. BN for the first `start` steps, the full limits from step r_full (d_full) on.
    PAPER_WARMUP = (5000, 40000, 25000) is the paper's schedule. Every training forward counts
    as a step, recalibrate's passes included.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.9, r_max=3.0, d_max=5.0, warmup=None):
        super().__init__(num_features, eps, momentum)
        self.r_max = r_max
        self.d_max = d_max
        if warmup is not None:
            start, r_full, d_full = warmup
            if not 0 <= start <= min(r_full, d_full):
                raise ValueError(f"{type(self).__name__}: warmup (start, r_full, d_full) needs "
                                 f"0 <= start <= r_full and start <= d_full, got {warmup}")
            warmup = (start, r_full, d_full)
        self.warmup = warmup

    def extra_repr(self):
        warmup = f", warmup={self.warmup}" if self.warmup is not None else ""
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}{warmup}"

    def limits(self):
        """(r_max, d_max) for the next training step: the attributes, or with warm-up on, the
        schedule's values at t = num_batches_tracked (see the class docstring)."""
        name = type(self).__name__
        if self.r_max < 1 or self.d_max < 0:
            raise ValueError(f"{name} needs r_max >= 1 and d_max >= 0, got r_max={self.r_max}, "
                             f"d_max={self.d_max}")
        if self.warmup is None:
            return self.r_max, self.d_max
        start, r_full, d_full = self.warmup
        t = int(self.num_batches_tracked)

        def progress(full):   # 0 until `start`, then linear, 1 from `full` on
            return 1.0 if t >= full else max(0.0, (t - start) / (full - start))

        return 1 + (self.r_max - 1) * progress(r_full), self.d_max * progress(d_full)

    def forward(self, x):
        self._check_input(x)
        if not self.training:
            return self._normalize_with_running_stats(x)

        stat_shape, _ = stat_shape_and_dims(x)
        r_max, d_max = self.limits()
        # x_hat by BN's function with unit gamma, zero beta: its hand-derived backward for x;
        # gamma, beta, r and d act in the affine map after it, which autograd differentiates.
        unit, zero = torch.ones_like(self.weight), torch.zeros_like(self.bias)
        x_hat, batch_mean, batch_var = BatchNormFunction.apply(x, unit, zero, self.eps,
                                                               self.detach_stats)
        with torch.no_grad():   # constants for the gradient, from the pre-step estimates
            running_std = torch.sqrt(self.running_var + self.eps)                    # s
            r = (torch.sqrt(batch_var + self.eps) / running_std).clamp(1 / r_max, r_max)
            d = ((batch_mean - self.running_mean) / running_std).clamp(-d_max, d_max)
        # eq. 2.2 and this step counted in num_batches_tracked, as BN's (the warm-up reads it)
        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])
        renormed = x_hat * r.view(stat_shape) + d.view(stat_shape)          # x_hat * r + d
        return renormed * self.weight.view(stat_shape) + self.bias.view(stat_shape)


class BatchRenorm1d(BatchRenorm):
    """Batch Renormalization of input (N, C)."""
    input_rank = 2
    input_layout = "(N, C)"


class BatchRenorm2d(BatchRenorm):
    """Batch Renormalization of input (N, C, H, W): statistics per channel over N, H and W."""
    input_rank = 4
    input_layout = "(N, C, H, W)"


# ----------------------------------------------------------------------------- by name

def _group_norm(num_features, rank, groups):
    # No default count: G must divide every width the network normalises, so each model script
    # chooses its own.
    if groups is None:
        raise ValueError(f"norm 'gn' needs the network's GroupNorm group count, got groups=None "
                         f"for {num_features} channels: the network must pass groups= to "
                         "norm_layers")
    return GroupNorm(groups, num_features)


# The normalization layers a network can put before each nonlinearity, by the name that
# `--norm` and history.json use: name -> build(num_features, rank, groups), where rank is the
# input's number of dimensions (2 for (N, C), 4 for (N, C, H, W)) and groups the network's
# GroupNorm group count (a named constant of each model script; only "gn" uses it, and needs
# it). A new normalization is one entry here plus its class. "none" builds nothing; "bn" and
# "brn" keep running estimates (batchnorm_layers finds both), "ln" and "gn" have none.
NORMALIZATIONS = {
    "none": None,
    "bn": lambda num_features, rank, groups: (BatchNorm1d if rank == 2 else BatchNorm2d)(
        num_features),
    "ln": lambda num_features, rank, groups: LayerNorm(num_features),
    "gn": _group_norm,
    "brn": lambda num_features, rank, groups: (BatchRenorm1d if rank == 2 else BatchRenorm2d)(
        num_features),
}


def norm_layers(norm, num_features, rank, groups=None):
    """[the layer] that `norm` names, or [] for "none": a list, to splice into a Sequential."""
    if norm not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {norm!r}; expected one of "
                         f"{', '.join(NORMALIZATIONS)}")
    build = NORMALIZATIONS[norm]
    return [] if build is None else [build(num_features, rank, groups)]
