"""configs/feature_knowledge.toml's student recipe in PyTorch, for one of its methods: the CNN
student (channels [8, 16]) trained for 3 epochs of SGD (lr 0.05, momentum 0.9, weight decay
5e-4, cosine per epoch, batch 128) on the first 20,000 Fashion-MNIST images, from the config's
CNN [16, 32] teacher checkpoint, with cross-entropy plus

    nst  50 · NST on features.7
    ft   200 · FT (p1 2, p2 1) on features.7: the student's map through RepDistiller's translator
         (three 3×3 convs with batch norm and leaky ReLU 0.1, to half the teacher's channels),
         the teacher's through the encoder of a paraphraser (3×3 convs 32 → 32 → 16 → 16 and a
         decoder back, leaky ReLU 0.1, no batch norm) first trained for 3 epochs to reconstruct
         the teacher's map (mean squared error, SGD at lr 0.05 without schedule), then frozen
    cc   KL at T = 1 (weight 1) + 0.003 · CC (γ 0.4, P 2) of the logits
    vid  VID on features.3 and features.7, each through its regressor (three 1×1 convs, no
         biases) with its own per-channel log-scale starting at variance 5 (weight 1 each)
    irg  IRG (0.1 / 5 / 5) on the logits, features.7 flattened, features.3 and features.7
    crd  0.8 · CRD on features.7 flattened through two 128-wide embedding heads (linear, then
         divided by the norm), memory banks of all 20,000 samples, 4,096 negatives per sample
         from other classes, nce_t 0.07, nce_mom 0.5, Z set by the first batch

and its test accuracy on the first 5,000 test images. It tells a recipe's result from an engine
bug: the losses are tools/golden/make_golden.py's transcriptions of the reference code.

    python3 examples/pytorch_teacher/feature_recipe.py nst --teacher runs/fk/checkpoints/teacher.safetensors
"""

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "..", "tools", "golden"))
from make_golden import cc, crd, ft, irg, kd, nst, vid  # noqa: E402
from train_teacher import Cnn, load  # noqa: E402


def block_output(model, x):
    """features.7 (the second block's output) and the logits."""
    h = model.features(x)
    return h, model.classifier(torch.flatten(h, 1))


def block_outputs(model, x):
    """features.3 and features.7 (both blocks' outputs) and the logits."""
    h1 = model.features[:4](x)
    h2 = model.features[4:](h1)
    return h1, h2, model.classifier(torch.flatten(h2, 1))


def vid_regressor(cin, cout):
    conv = lambda a, b: torch.nn.Conv2d(a, b, 1, bias=False)  # noqa: E731
    return torch.nn.Sequential(conv(cin, cout), torch.nn.ReLU(), conv(cout, cout), torch.nn.ReLU(), conv(cout, cout))


class Memory:
    """CRD's two banks, the per-sample negatives and the first batch's Z (RepDistiller's
    ContrastMemory and CIFAR100InstanceSample)."""

    def __init__(self, labels, dim=128, k=4096):
        n = len(labels)
        sigma = 1.0 / math.sqrt(dim / 3)
        self.banks = [torch.rand(n, dim) * 2 * sigma - sigma for _ in range(2)]
        self.others = [torch.nonzero(labels != c).squeeze(1) for c in range(10)]
        self.labels, self.k, self.z = labels, k, (0.0, 0.0)

    def rows(self, idx):
        negatives = []
        for i in idx.tolist():
            pool = self.others[int(self.labels[i])]
            negatives.append(pool[torch.randperm(len(pool))[:self.k]])
        return torch.cat([idx.unsqueeze(1), torch.stack(negatives)], 1)

    def loss(self, student, teacher, idx):
        rows = self.rows(idx)
        memory_student, memory_teacher = (b[rows] for b in self.banks)
        n = float(len(self.labels))
        if self.z == (0.0, 0.0):
            with torch.no_grad():
                self.z = tuple((torch.exp(torch.bmm(m, a.unsqueeze(2)) / 0.07).mean() * n).item()
                               for m, a in ((memory_teacher, student), (memory_student, teacher)))
        loss, new = crd(student, teacher, memory_student, memory_teacher, n_data=n,
                        z_student=self.z[0], z_teacher=self.z[1])
        self.banks[0][idx] = new["memory_student_new"]
        self.banks[1][idx] = new["memory_teacher_new"]
        return loss


def ft_block(widths, bn):
    """FT's three 3×3 convolutions, each with batch norm (when bn) and leaky ReLU 0.1."""
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Conv2d(a, b, 3, 1, 1), torch.nn.BatchNorm2d(b) if bn else torch.nn.Sequential(),
                   torch.nn.LeakyReLU(0.1)]
    return torch.nn.Sequential(*layers)


def pretrain_paraphraser(teacher, train_x, epochs):
    """RepDistiller's paraphraser (its decoder's stride-1 transposed convolutions written as the
    equal 3×3 convolutions, as wgdistill builds it), trained to reconstruct features.7."""
    encoder, decoder = ft_block((32, 32, 16, 16), False), ft_block((16, 16, 32, 32), False)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(order) - 127, 128):
            with torch.no_grad():
                t = block_output(teacher, train_x[order[start:start + 128]])[0]
            loss = F.mse_loss(decoder(encoder(t)), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"paraphraser epoch {epoch + 1}/{epochs}: reconstruction loss {loss.item():.4f}")
    encoder.eval()
    return encoder


def embed(width):
    return torch.nn.Linear(width, 128)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["scratch", "nst", "ft", "cc", "vid", "irg", "crd"])
    p.add_argument("--teacher", required=True, help="the CNN [16, 32] teacher's checkpoint")
    p.add_argument("--data", default=os.environ.get("WGDISTILL_DATA", "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_x, train_y = load(args.data, "train")
    test_x, test_y = load(args.data, "test")
    train_x, train_y, test_x, test_y = train_x[:20000], train_y[:20000], test_x[:5000], test_y[:5000]
    teacher = Cnn((16, 32))
    teacher.load_state_dict(load_file(args.teacher), strict=True)
    teacher.eval()
    student = Cnn((8, 16))
    translator = ft_block((16, 16, 16, 16), True)
    paraphraser = pretrain_paraphraser(teacher, train_x, 3) if args.method == "ft" else None
    regressors = torch.nn.ModuleList([vid_regressor(8, 16), vid_regressor(16, 32)])
    start = math.log(math.expm1(5.0 - 1e-5))
    log_scales = [torch.nn.Parameter(torch.full((c,), start)) for c in (16, 32)]
    params = list(student.parameters())
    if args.method == "ft":
        params += list(translator.parameters())
    if args.method == "vid":
        params += list(regressors.parameters()) + log_scales
    heads = torch.nn.ModuleList([embed(16 * 7 * 7), embed(32 * 7 * 7)])
    memory = Memory(train_y)
    if args.method == "crd":
        params += list(heads.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(args.epochs):
        for group in opt.param_groups:
            group["lr"] = 0.05 * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        student.train()
        translator.train()
        order = torch.randperm(len(train_x))
        total, steps = 0.0, 0
        for start in range(0, len(order), 128):
            idx = order[start:start + 128]
            if len(idx) < 2:
                continue
            x, y = train_x[idx], train_y[idx]
            s1, fs, logits = block_outputs(student, x)
            loss = F.cross_entropy(logits, y)
            if args.method != "scratch":
                with torch.no_grad():
                    t1, ft_map, t_logits = block_outputs(teacher, x)
                if args.method == "crd":
                    unit = [F.normalize(h(torch.flatten(f, 1)), dim=1, eps=0.0)
                            for h, f in zip(heads, (fs, ft_map))]
                    loss = loss + 0.8 * memory.loss(unit[0], unit[1], idx)
                elif args.method == "irg":
                    loss = loss + irg(logits, fs, s1, fs, t_logits, ft_map, t1, ft_map)
                elif args.method == "vid":
                    for r, ls, a, b in zip(regressors, log_scales, (s1, fs), (t1, ft_map)):
                        loss = loss + vid(r(a), b, ls)
                elif args.method == "nst":
                    loss = loss + 50.0 * nst(fs, ft_map)
                elif args.method == "ft":
                    with torch.no_grad():
                        factor = paraphraser(ft_map)
                    loss = loss + 200.0 * ft(translator(fs), factor)
                else:
                    loss = loss + kd(logits, t_logits, 1.0) + 0.003 * cc(logits, t_logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        student.eval()
        with torch.no_grad():
            acc = (student(test_x).argmax(1) == test_y).float().mean().item()
        print(f"{args.method} epoch {epoch + 1}/{args.epochs}: loss {total / steps:.4f}, test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
