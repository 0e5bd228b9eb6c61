"""One epoch of configs/results.toml's student recipe in PyTorch, for a method of the table.

The tiny CNN student (channels [8, 16]) trained for one epoch of SGD (lr 0.05, momentum 0.9,
weight decay 5e-4, batch 128) with cross-entropy plus, as in configs/results.toml, DKD
(alpha 1, beta 8, T 4, at half weight: the first epoch of its two-epoch warm-up) or a FitNet hint
(weight 100 on features.7 through a 1x1-conv adapter), from a teacher checkpoint; or two such
students by deep mutual learning (each: ce + KD at T = 1 toward the other's detached output). It tells
whether a recipe is stable for this student in PyTorch too, independently of wgdistill:

    python3 examples/pytorch_teacher/student_recipe.py dkd --teacher runs/results/seed-0/checkpoints/teacher.safetensors
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_teacher import Cnn, accuracy, load  # noqa: E402


def dkd(student, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """mdistiller's decoupled KD: alpha * TCKD + beta * NCKD, each scaled by T^2."""
    gt = F.one_hot(labels, student.shape[1]).bool()
    ps, pt = F.softmax(student / temperature, 1), F.softmax(teacher / temperature, 1)
    binary = lambda p: torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)  # noqa: E731
    scale = temperature ** 2 / labels.shape[0]
    tckd = F.kl_div(torch.log(binary(ps)), binary(pt), reduction="sum") * scale
    masked = lambda z: z / temperature - 1000.0 * gt  # noqa: E731
    nckd = F.kl_div(F.log_softmax(masked(student), 1), F.softmax(masked(teacher), 1),
                    reduction="sum") * scale
    return alpha * tckd + beta * nckd


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["scratch", "dkd", "fitnet", "dml"])
    p.add_argument("--teacher", required=True, help="a CNN [32, 64] checkpoint")
    p.add_argument("--data", default=os.environ.get("WGDISTILL_DATA",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_x, train_y = load(args.data, "train")
    test_x, test_y = load(args.data, "test")
    teacher = Cnn((32, 64))
    teacher.load_state_dict(load_file(args.teacher), strict=True)
    teacher.eval()
    student, adapter, peer = Cnn((8, 16)), torch.nn.Conv2d(16, 64, 1), Cnn((8, 16))
    params = list(student.parameters())
    if args.method == "fitnet":
        params += list(adapter.parameters())
    if args.method == "dml":
        params += list(peer.parameters())
        peer.train()
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    student.train()
    order = torch.randperm(len(train_x))
    for step, i in enumerate(range(0, len(order), 128)):
        idx = order[i:i + 128]
        x, y = train_x[idx], train_y[idx]
        with torch.no_grad():
            t_features = teacher.features(x)
            t_logits = teacher.classifier(torch.flatten(t_features, 1))
        features = student.features(x)
        logits = student.classifier(torch.flatten(features, 1))
        loss = F.cross_entropy(logits, y)
        if args.method == "dkd":
            loss = loss + 0.5 * dkd(logits, t_logits, y)
        elif args.method == "fitnet":
            loss = loss + 100.0 * F.mse_loss(adapter(features), t_features)
        elif args.method == "dml":
            other = peer(x)
            kl = lambda s, t: F.kl_div(F.log_softmax(s, 1), F.softmax(t.detach(), 1),  # noqa: E731
                                       reduction="batchmean")
            loss = loss + kl(logits, other) + F.cross_entropy(other, y) + kl(other, logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (0, 1, 10, 100):
            print(f"step {step}: loss {loss.item():.4f}")
    accs = [accuracy(student, test_x, test_y)]
    if args.method == "dml":
        accs.append(accuracy(peer, test_x, test_y))
    print(f"{args.method} (lr {args.lr}, seed {args.seed}): test accuracy after one epoch "
          + " / ".join(f"{a:.4f}" for a in accs))


if __name__ == "__main__":
    main()
