"""mini-ResNet on MNIST: eight layers built from basic residual blocks (the report's chapter 4).

    python resnet.py                         # our default: cosine schedule, 15 epochs
    python resnet.py --plain --epochs 60    # the report's plain config

A basic block computes y = ReLU(F(x) + shortcut(x)) with F = conv3x3 -> BN -> ReLU -> conv3x3 -> BN
(eq. 4.1, y = F(x) + x). Where F changes the shape (stride 2, more channels) the shortcut is a
1x1 convolution with BN, the projection of He et al. (2016); elsewhere it is x itself.

Eight weighted layers:  conv3x3 stem                                  1 -> 16, 28x28
                        block 1 (2 convs)                            16 -> 16, 28x28
                        block 2 (2 convs, stride 2, projection)      16 -> 32, 14x14
                        block 3 (2 convs, stride 2, projection)      32 -> 64,  7x7
                        global average pool, linear                  64 -> 10
BN follows every convolution (the report's ResNet always has it: config's norm); --no-bn removes
them all.
"""
from torch import nn

import solver
from norms import norm_layers

WIDTHS = (16, 32, 64)
# GroupNorm's group count (--norm gn): divides every width, in groups of 2, 4 and 8 channels.
GN_GROUPS = 8

config = dict(
    solver.DEFAULTS,
    max_epoch=15,      # the report ran 60 with a constant rate
    augment_shift=2,   # random shifts of up to 2 px: what lifts the final epoch past 99.5%
    norm="bn",         # the report's ResNet always has BN; --no-bn removes it
)


def conv_norm(n_in, n_out, norm, kernel_size=3, stride=1):
    """Convolution followed by the normalization; the convolution needs no bias when a
    normalization's beta follows."""
    conv = nn.Conv2d(n_in, n_out, kernel_size, stride=stride, padding=kernel_size // 2,
                     bias=norm == "none")
    if norm == "none":
        return conv
    return nn.Sequential(conv, *norm_layers(norm, n_out, rank=4, groups=GN_GROUPS))


class BasicBlock(nn.Module):
    def __init__(self, n_in, n_out, stride, norm):
        super().__init__()
        self.residual = nn.Sequential(                          # F(x)
            conv_norm(n_in, n_out, norm, stride=stride), nn.ReLU(),
            conv_norm(n_out, n_out, norm))
        self.shortcut = (nn.Identity() if stride == 1 and n_in == n_out
                         else conv_norm(n_in, n_out, norm, kernel_size=1, stride=stride))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.residual(x) + self.shortcut(x))   # y = F(x) + x, eq. 4.1


def build_model(norm: str = config["norm"]) -> nn.Module:
    """norm: a name of norms.NORMALIZATIONS: "bn" (the default), "ln", "gn", "brn" or
    "none"."""
    c1, c2, c3 = WIDTHS
    return nn.Sequential(
        conv_norm(1, c1, norm), nn.ReLU(),
        BasicBlock(c1, c1, stride=1, norm=norm),
        BasicBlock(c1, c2, stride=2, norm=norm),
        BasicBlock(c2, c3, stride=2, norm=norm),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(c3, 10),
    )


if __name__ == "__main__":
    solver.run("resnet", build_model, config)
