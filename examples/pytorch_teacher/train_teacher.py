"""Train a Fashion-MNIST teacher in PyTorch and save it for wgdistill.

The network is wgdistill's `cnn` (channels [32, 64]) spelled in PyTorch: the same module
names, so `model.state_dict()` saved with safetensors loads as `checkpoint = "..."` in a
wgdistill config, and `wgdistill eval` gives the test accuracy printed here. Not part of CI:

    pip install torch safetensors
    python3 examples/pytorch_teacher/train_teacher.py --out teacher.safetensors
    wgdistill eval teacher.safetensors --arch cnn --channels 32,64
    wgdistill train examples/pytorch_teacher/distill.toml --out runs/pytorch-teacher

It also evaluates a checkpoint written by wgdistill (`--evaluate FILE`), loaded with
`strict=True`, to check the other direction.
"""

import argparse
import gzip
import os
import struct

import torch
from torch import nn
from safetensors.torch import load_file, save_file

# wgdistill normalises with the training set's pixel mean and standard deviation.
MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load(folder, split):
    prefix = "train" if split == "train" else "t10k"
    def find(kind):
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
        raise FileNotFoundError(f"{folder}: no {prefix}-{kind}-ubyte(.gz)")
    images = read_idx(find("images-idx3")).float().div(255.0).sub(MEAN).div(STD)
    labels = read_idx(find("labels-idx1")).long()
    return images.unsqueeze(1), labels


class Cnn(nn.Module):
    """wgdistill's `cnn`: [Conv2d 3x3 (no bias), BatchNorm2d, ReLU, MaxPool2d(2)] per width,
    then a Linear classifier over the flattened features."""

    def __init__(self, channels=(32, 64), classes=10, size=28):
        super().__init__()
        layers, cin = [], 1
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(), nn.MaxPool2d(2)]
            cin, size = c, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin * size * size, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def augment(x, pad=2):
    """A random crop of the zero-padded image (background in normalised units) and a
    horizontal flip with probability 1/2, per image."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=-MEAN / STD)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def accuracy(model, images, labels):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            correct += (model(images[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum().item()
    return correct / len(images)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("WGDISTILL_DATA",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--out", default="teacher.safetensors")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--adamw", action="store_true", help="AdamW instead of SGD with momentum")
    p.add_argument("--augment", action="store_true",
                   help="random crop (zero padding 2) and horizontal flip, as wgdistill's augment")
    p.add_argument("--channels", default="32,64")
    p.add_argument("--evaluate", metavar="FILE", help="only evaluate a wgdistill checkpoint")
    args = p.parse_args()
    torch.manual_seed(0)
    test_x, test_y = load(args.data, "test")
    model = Cnn(tuple(int(c) for c in args.channels.split(",")))
    if args.evaluate:
        model.load_state_dict(load_file(args.evaluate), strict=True)
        print(f"{args.evaluate}: test accuracy {accuracy(model, test_x, test_y):.4f}")
        return
    train_x, train_y = load(args.data, "train")
    if args.adamw:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            x = augment(train_x[idx]) if args.augment else train_x[idx]
            loss = nn.functional.cross_entropy(model(x), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, test_x, test_y):.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out}: test accuracy {accuracy(model, test_x, test_y):.4f}")


if __name__ == "__main__":
    main()
