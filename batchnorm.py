"""Batch Normalization written by hand: the one layer of this lesson not taken from torch.nn.

Ioffe & Szegedy (2015), in the report's notation. For each channel c, over the m values that
channel takes in a mini-batch (m = N for input (N, C); m = N*H*W for input (N, C, H, W)):

Training, eq. 2.1
    mu_B      = (1/m) * sum(x)                      mini-batch mean
    sigma_B^2 = (1/m) * sum((x - mu_B)^2)           mini-batch variance (biased: divide by m)
    BN(x)     = gamma * (x - mu_B) / sqrt(sigma_B^2 + eps) + beta

Running estimates, eq. 2.2 (the report's convention, momentum = 0.9 by default)
    running_mean = momentum * running_mean + (1 - momentum) * mu_B
    running_var  = momentum * running_var  + (1 - momentum) * sigma_B^2 * m / (m - 1)

    torch.nn.BatchNorm writes the same rule the other way round: its `momentum` (default 0.1)
    is the weight of the *new* batch statistic. Ours with momentum 0.9 is torch's with 0.1;
    in general ours(momentum) == torch(momentum = 1 - momentum).

Evaluation (after .eval())
    BN(x) = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
    Nothing depends on the rest of the batch, so one test digit gets the same answer alone or in
    a batch of 10,000, and the running estimates stay where training left them.

The backward pass of eq. 2.1 is derived by hand in `BatchNormFunction` below; `batch_norm_reference`
is the same forward written straight from eq. 2.1 for autograd to differentiate, kept for
comparison (test_batchnorm.py shows both agree with each other and with torch.nn.BatchNorm).
"""
import copy

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _stat_shape_and_dims(x):
    """Statistics are per channel (dim 1): reduce over every other axis, broadcast back as
    (1, C, 1, ...)."""
    reduce_dims = [0] + list(range(2, x.dim()))
    stat_shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return stat_shape, reduce_dims


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization (eq. 2.1) with a backward pass derived by hand.

    Forward, per channel:  x_hat = (x - mu_B) * inv_std,  inv_std = 1 / sqrt(sigma_B^2 + eps),
                           y = gamma * x_hat + beta.

    Backward. Let g = dL/dy (the upstream gradient) and sums run over the m values of a channel.
    beta and gamma enter y like the bias and weight of a per-channel linear map:
        dL/dbeta  = sum(g)
        dL/dgamma = sum(g * x_hat)
    For x, the chain rule has three paths: directly through x, and through mu_B and sigma_B^2,
    which every x of the channel feeds. Writing g_hat = gamma * g = dL/dx_hat:
        dL/dsigma^2 = sum(g_hat * (x - mu_B)) * (-1/2) * inv_std^3
        dL/dmu_B    = -inv_std * sum(g_hat)           (the sigma^2 path contributes 0, since
                                                       sum(x - mu_B) = 0)
        dL/dx       = g_hat * inv_std + dL/dsigma^2 * 2 (x - mu_B) / m + dL/dmu_B / m
    which collapses to the closed form computed below:
        dL/dx = gamma * inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat))
    `batch_norm_backward_by_steps` runs the four lines above one intermediate at a time, as a
    derivation to execute and check; the closed form is the one used because it needs three
    passes over the data and no buffer beyond the one it returns, where the steps make five
    full-size temporaries (bench.py times both).

    With detach_stats=True, mu_B and sigma_B^2 are treated as constants (the BN paper's
    section 2 warns against it): only the direct path is left, dL/dx = gamma * inv_std * g.

    Returns y and, as non-differentiable extras, the batch mean and biased variance that the
    layer needs for its running estimates (computed once, here, rather than a second time).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, detach_stats=False):
        stat_shape, reduce_dims = _stat_shape_and_dims(x)
        # Two passes (mean, then the mean of squared deviations) rather than torch.var_mean,
        # whose Welford reduction over several axes is slow on CPU (docs/performance-notes.md).
        mean = x.mean(dim=reduce_dims, keepdim=True)                   # mu_B
        x_hat = x - mean                                               # centred, normalised below
        var = x_hat.square().mean(dim=reduce_dims, keepdim=True)       # sigma_B^2 (biased)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)                            # (x - mu_B) / sqrt(sigma_B^2 + eps)
        y = (x_hat * weight.view(stat_shape)).add_(bias.view(stat_shape))   # gamma * x_hat + beta
        # x_hat (not x) is what backward needs; keeping it costs the same memory as keeping x.
        ctx.save_for_backward(x_hat, weight, inv_std)
        ctx.detach_stats = detach_stats
        batch_mean, batch_var = mean.view(-1), var.view(-1)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x_hat, weight, inv_std = ctx.saved_tensors
        stat_shape, reduce_dims = _stat_shape_and_dims(x_hat)
        m = x_hat.numel() // x_hat.shape[1]

        sum_g = grad_y.sum(dim=reduce_dims)                   # dL/dbeta
        g_xhat = grad_y * x_hat                               # g * x_hat, wanted only for its sum
        sum_g_xhat = g_xhat.sum(dim=reduce_dims)              # dL/dgamma

        grad_x = None
        if ctx.needs_input_grad[0]:
            scale = weight.view(stat_shape) * inv_std
            if ctx.detach_stats:   # the direct path only
                grad_x = grad_y * scale
            else:
                # gamma * inv_std / m * (m*g - sum(g) - x_hat*sum(g*x_hat))
                #   = scale * g - scale * mean(g) - x_hat * scale * mean(g*x_hat),
                # computed in three passes into g_xhat's memory, free now that its sum is taken:
                # every new buffer of this size costs time (docs/performance-notes.md).
                grad_x = torch.mul(x_hat, scale * (sum_g_xhat / -m).view(stat_shape), out=g_xhat)
                grad_x.addcmul_(grad_y, scale)
                grad_x.sub_(scale * (sum_g / m).view(stat_shape))
        return grad_x, sum_g_xhat, sum_g, None, None


def batch_norm_backward_by_steps(grad_y, x, weight, eps=1e-5):
    """The backward of eq. 2.1 one intermediate at a time, as BatchNormFunction derives it.

    Returns (dL/dx, dL/dgamma, dL/dbeta) for upstream gradient grad_y = dL/dy. The lesson's
    version of CS231n's first backward: each line is one line of the chain rule.
    """
    stat_shape, reduce_dims = _stat_shape_and_dims(x)
    m = x.numel() // x.shape[1]
    total = lambda t: t.sum(dim=reduce_dims, keepdim=True)    # sum over a channel's m values
    gamma = weight.view(stat_shape)
    # the forward again, keeping every intermediate
    mu = total(x) / m                                                   # mu_B
    centred = x - mu                                                    # x - mu_B
    var = total(centred ** 2) / m                                       # sigma_B^2
    inv_std = 1 / torch.sqrt(var + eps)
    x_hat = centred * inv_std
    # backward, from y = gamma * x_hat + beta down to x
    grad_bias = total(grad_y)                                           # dL/dbeta
    grad_weight = total(grad_y * x_hat)                                 # dL/dgamma
    grad_x_hat = grad_y * gamma                                         # dL/dx_hat
    grad_var = total(grad_x_hat * centred) * -0.5 * inv_std ** 3        # dL/dsigma^2
    grad_mu = total(-grad_x_hat * inv_std) + grad_var * total(-2 * centred) / m   # dL/dmu_B
    grad_x = grad_x_hat * inv_std + grad_var * 2 * centred / m + grad_mu / m       # dL/dx
    return grad_x, grad_weight.view(-1), grad_bias.view(-1)


def batch_norm_reference(x, weight, bias, eps=1e-5):
    """eq. 2.1 exactly as written, differentiated by autograd: the yardstick for
    BatchNormFunction."""
    stat_shape, reduce_dims = _stat_shape_and_dims(x)
    mu = x.mean(dim=reduce_dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=reduce_dims, keepdim=True)
    return weight.view(stat_shape) * (x - mu) / torch.sqrt(var + eps) + bias.view(stat_shape)


class BatchNorm(nn.Module):
    """What BatchNorm1d and BatchNorm2d share (isinstance(m, BatchNorm) finds either of them).

    They differ only in the input rank they accept."""

    input_rank = None   # set by the subclasses
    input_layout = None

    def __init__(self, num_features, eps=1e-5, momentum=0.9, detach_stats=False):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.detach_stats = detach_stats   # True: the backward treats mu_B, sigma_B^2 as constants
        self.weight = nn.Parameter(torch.ones(num_features))    # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))     # beta
        # Buffers, not parameters: saved in state_dict() and moved by .to(), but not trained.
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self):
        detach = ", detach_stats=True" if self.detach_stats else ""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{detach}"

    def _check_input(self, x):
        name = type(self).__name__
        if x.dim() != self.input_rank:
            raise ValueError(f"{name} expects a {self.input_rank}-D input {self.input_layout}, "
                             f"got a {x.dim()}-D input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects {self.num_features} channels "
                             f"in dim 1, got input of shape {tuple(x.shape)}")
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError(f"{name} in training needs more than one value per channel to compute "
                             f"a batch variance, got input of shape {tuple(x.shape)}; "
                             "use a larger batch or call .eval()")

    def forward(self, x):
        self._check_input(x)
        if not self.training:
            return self._normalize_with_running_stats(x)

        y, batch_mean, batch_var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps,
                                                           self.detach_stats)
        self.update_running_estimates(batch_mean, batch_var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def update_running_estimates(self, batch_mean, batch_var, m):
        """eq. 2.2, from a training batch's mean and biased variance over m values a channel."""
        # The running variance estimates the population variance used at test time, so it
        # takes the unbiased estimate m/(m-1) * sigma_B^2, as torch.nn.BatchNorm does;
        # eq. 2.1 itself normalises with the biased sigma_B^2.
        unbiased_var = batch_var * (m / (m - 1))
        self.running_mean.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
        self.running_var.mul_(self.momentum).add_(unbiased_var, alpha=1 - self.momentum)

    def eval_scale_and_shift(self):
        """Evaluation's BN as a fixed affine map per channel, y = scale * x + shift:
        scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def _normalize_with_running_stats(self, x):
        """gamma * (x - running_mean) / sqrt(running_var + eps) + beta, as x * scale + shift."""
        stat_shape, _ = _stat_shape_and_dims(x)
        scale, shift = self.eval_scale_and_shift()
        # Two passes over x (a multiply, then an add in place); torch.addcmul does it in one but,
        # with both per-channel operands broadcast, is slower (docs/performance-notes.md).
        return (x * scale.view(stat_shape)).add_(shift.view(stat_shape))


class BatchNorm1d(BatchNorm):
    """Batch normalization of input (N, C): statistics per feature over the batch."""
    input_rank = 2
    input_layout = "(N, C)"


class BatchNorm2d(BatchNorm):
    """Batch normalization of input (N, C, H, W): statistics per channel over N, H and W."""
    input_rank = 4
    input_layout = "(N, C, H, W)"


# ----------------------------------------------------------------------------- BN's relatives

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
        stat_shape, _ = _stat_shape_and_dims(x)   # (1, C, 1, ...): gamma, beta per channel
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
    the paper does, from the number t of training steps taken before this one (the int64
    buffer `num_batches_tracked`, saved in state_dict, so a resumed run continues exactly):
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
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

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

        stat_shape, _ = _stat_shape_and_dims(x)
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
            self.num_batches_tracked.add_(1)
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


# ----------------------------------------------------------------------------- after training

def batchnorm_layers(model):
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def fold_batchnorm(model):
    """A copy of `model` for inference in which BN is merged into the layer before it.

    In evaluation BN is a fixed affine map per channel (BN paper, Algorithm 2):
        y = scale * x + (beta - scale * running_mean),  scale = gamma / sqrt(running_var + eps)
    so a BN that directly follows an nn.Linear or nn.Conv2d in an nn.Sequential folds into it:
        W' = scale * W (per output channel),   b' = (b - running_mean) * scale + beta
    and is replaced by nn.Identity(). The copy is in eval mode; `model` is left as it was.
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequential) - 1):
            layer, bn = sequential[i], sequential[i + 1]
            if isinstance(bn, BatchNorm) and isinstance(layer, (nn.Linear, nn.Conv2d)):
                scale, shift = bn.eval_scale_and_shift()
                layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)))
                bias = layer.bias if layer.bias is not None else 0
                # (b - running_mean) * scale + beta
                layer.bias = nn.Parameter(bias * scale + shift)
                sequential[i + 1] = nn.Identity()
    return folded


@torch.no_grad()
def recalibrate(model, batches):
    """Population statistics for every BN layer, the BN paper's Algorithm 2 (steps 8-11).

    The equal-sized batches go through the model with batch statistics, as in training; then
    each layer's running_mean becomes the mean of its batch means, E[x], and running_var
    m / (m - 1) times the mean of its batch variances, Var[x]. No parameter changes. This
    replaces the momentum average, which weights the last batches most, and by weights that
    were still moving. Returns the model in eval mode.
    """
    layers = batchnorm_layers(model)
    sums = {layer: [0, 0, 0] for layer in layers}   # sum of means, sum of variances, batches

    def record(layer, inputs):
        x = inputs[0]
        stat_shape, reduce_dims = _stat_shape_and_dims(x)
        mean = x.mean(dim=reduce_dims)
        var = (x - mean.view(stat_shape)).square().mean(dim=reduce_dims)   # biased, as eq. 2.1
        sums[layer][0] += mean
        sums[layer][1] += var
        sums[layer][2] += 1
        layer.values_per_channel = x.numel() // x.shape[1]

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        mean_sum, var_sum, count = sums[layer]
        m = layer.values_per_channel
        layer.running_mean.copy_(mean_sum / count)
        layer.running_var.copy_(var_sum / count * (m / (m - 1)))
        del layer.values_per_channel
    return model.eval()


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
