"""Shared test fixtures: a tiny MNIST written as real IDX files, so no test ever downloads."""
import struct

import pytest
import torch


def write_idx(path, array):
    """An IDX file as MNIST's: magic 0x0000 08 <ndim>, big-endian dims, then unsigned bytes."""
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + bytes(array.to(torch.uint8).flatten().tolist()))


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """300 training and 100 test 'digits': class k is a bright square at a k-dependent place."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen)
        for i, label in enumerate(labels.tolist()):
            row, col = 2 + 2 * label, 4 + label
            images[i, row:row + 6, col:col + 6] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root
