#!/usr/bin/env python3
"""Golden cases for wgdistill's losses, computed in float64 with PyTorch autograd.

Each loss is written here as its reference implementation computes it (docs/losses.md names
them), independently of wgdistill's kernels and f64 references: the expected values are
`loss` and `grad_student` = d loss / d student, rounded to f32.

  make_golden.py check [DIR]           recompute every case in DIR (tests/fixtures/golden) from
                                       its stored inputs; exit 1 if any differs beyond its
                                       tolerance
  make_golden.py make NAME OP --shape student=8,10 [--shape teacher=8,10] [--classes C]
                 [--attr KEY=VALUE ...] [--scale S] [--seed N] [--dir DIR]
                                       draw inputs (normal, times S; labels in 0..C), compute
                                       the expected outputs, write NAME.in/expected.safetensors
                                       and the manifest entry (replacing one of the same name)

Needs torch, numpy and safetensors (pip install torch numpy safetensors).
"""

import argparse
import json
import math
import pathlib
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "tests" / "fixtures" / "golden"
RTOL, ATOL = 1e-4, 1e-5


def flat(x):
    return x.reshape(x.shape[0], -1)


def ce(student, labels):
    return F.cross_entropy(student, labels)


def kd(student, teacher, temperature=4.0):
    # RepDistiller's DistillKL: KL(p_t || p_s) summed, times T^2 / B.
    t = temperature
    log_ps = F.log_softmax(student / t, dim=1)
    pt = F.softmax(teacher / t, dim=1)
    return F.kl_div(log_ps, pt, reduction="sum") * t * t / student.shape[0]


def dkd(student, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0):
    # mdistiller's dkd_loss: binary target/rest masses, then the non-target distributions with
    # the target logit pushed out by 1000.
    t, b = temperature, student.shape[0]
    target = F.one_hot(labels, student.shape[1]).to(student.dtype)
    ps, pt = F.softmax(student / t, dim=1), F.softmax(teacher / t, dim=1)

    def masses(p):
        return torch.stack([(p * target).sum(1), (p * (1 - target)).sum(1)], dim=1)

    tckd = F.kl_div(torch.log(masses(ps)), masses(pt), reduction="sum") * t * t / b
    log_qs = F.log_softmax(student / t - 1000.0 * target, dim=1)
    qt = F.softmax(teacher / t - 1000.0 * target, dim=1)
    nckd = F.kl_div(log_qs, qt, reduction="sum") * t * t / b
    return alpha * tckd + beta * nckd


def bce(student, target):
    return F.binary_cross_entropy_with_logits(student, target)


def l1(student, teacher):
    return F.l1_loss(student, teacher)


def js(student, teacher, temperature=3.0):
    # Adaptive DeepInversion's competition (NVlabs): ½ KL(p‖m) + ½ KL(q‖m) of the softmaxes at T,
    # m their mean, each KL with reduction="batchmean".
    p = F.softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    log_m = torch.log(0.5 * (p + q))
    return 0.5 * (F.kl_div(log_m, p, reduction="batchmean") + F.kl_div(log_m, q, reduction="batchmean"))


def tv(student, p=2.0):
    # NVlabs DeepInversion's get_image_prior_losses: four neighbour differences; loss_var_l2 is
    # the sum of their norms, loss_var_l1 the sum of their mean absolute values (without /255).
    x = student
    diffs = [x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
             x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]]
    if p == 2.0:
        return sum(torch.norm(d) for d in diffs)
    return sum(d.abs().mean() for d in diffs)


def l2_norm(student):
    # DeepInversion's loss_l2: each sample's norm, averaged over the batch.
    return torch.norm(student.reshape(student.shape[0], -1), dim=1).mean()


def bn_match(student, running):
    # DeepInversion's DeepInversionFeatureHook: norm(var − running_var) + norm(mean − running_mean).
    return torch.norm(student[1] - running[1]) + torch.norm(student[0] - running[0])


def hint(student, teacher):
    return F.mse_loss(student, teacher)


def at(student, teacher, p=2.0):
    def attention(f):
        return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))

    return (attention(student) - attention(teacher)).pow(2).mean()


def sp(student, teacher):
    b = student.shape[0]

    def similarity(f):
        f = flat(f)
        return F.normalize(f @ f.t())

    return (similarity(student) - similarity(teacher)).pow(2).sum() / (b * b)


def pairwise_distances(e):
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
    d[range(len(e)), range(len(e))] = 0
    return d


def rkd_distance(student, teacher):
    with torch.no_grad():
        dt = pairwise_distances(flat(teacher))
        dt = dt / dt[dt > 0].mean()
    ds = pairwise_distances(flat(student))
    ds = ds / ds[ds > 0].mean()
    return F.smooth_l1_loss(ds, dt)


def angles(e):
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_angle(student, teacher):
    with torch.no_grad():
        at_ = angles(flat(teacher))
    return F.smooth_l1_loss(angles(flat(student)), at_)


def pkt(student, teacher, eps=1e-7):
    def distribution(f):
        f = flat(f)
        f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
        s = (f @ f.t() + 1) / 2
        return s / s.sum(1, keepdim=True)

    ps, pt = distribution(student), distribution(teacher)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def ft(student, teacher, p1=2.0, p2=1.0):
    # RepDistiller's FactorTransfer: the factors are AT's maps; L1 for p2 = 1.
    def factor(f):
        return F.normalize(f.pow(p1).mean(1).reshape(f.shape[0], -1))

    d = factor(student) - factor(teacher)
    return F.l1_loss(factor(student), factor(teacher)) if p2 == 1 else d.pow(p2).mean()


def ab(student, teacher, margin=1.0):
    # RepDistiller's ABLoss on one tap, with its 3/1000 and the batch mean.
    m = margin
    loss = (student + m).pow(2) * ((student > -m) & (teacher <= 0)).to(student.dtype) + (
        student - m
    ).pow(2) * ((student <= m) & (teacher > 0)).to(student.dtype)
    return loss.sum() / student.shape[0] / 1000 * 3


def nst(student, teacher):
    # RepDistiller's NSTLoss (full loss): channels normalised over H·W, polynomial kernel.
    def normalized(f):
        return F.normalize(f.reshape(f.shape[0], f.shape[1], -1), dim=2)

    def kernel(a, b):
        return torch.bmm(a, b.transpose(1, 2)).pow(2)

    s, t = normalized(student), normalized(teacher)
    return kernel(t, t).mean() + kernel(s, s).mean() - 2 * kernel(s, t).mean()


def cc(student, teacher, gamma=0.4, max_p=2.0):
    # torchdistill's CCKDLoss, Gaussian kernel, batchmean: the Frobenius norm over B².
    def correlation(f):
        sim = f @ f.t()
        total = torch.zeros_like(sim)
        for p in range(int(max_p) + 1):
            total = total + (2 * gamma) ** p / math.factorial(p) * sim.pow(p)
        return math.exp(-2 * gamma) * total

    b = student.shape[0]
    return torch.dist(correlation(student), correlation(teacher), 2) / (b * b)


def fsp(student_a, student_b, teacher_a, teacher_b):
    # RepDistiller's FSP: compute_fsp's (bot.unsqueeze(1) * top.unsqueeze(2)).mean(-1), then the
    # mean squared difference; a is the earlier tap, b the later.
    def flow(a, b):
        a = a.reshape(a.shape[0], a.shape[1], -1)
        b = b.reshape(b.shape[0], b.shape[1], -1)
        return (a.unsqueeze(1) * b.unsqueeze(2)).mean(-1)

    return (flow(student_a, student_b) - flow(teacher_a, teacher_b)).pow(2).mean()


# Each op: its function and the names of its tensor inputs, in order.
def vid(student, teacher, log_scale, eps=1e-5):
    # RepDistiller VIDLoss: softplus written out, v = softplus(log_scale) + eps per channel.
    v = F.softplus(log_scale) + eps
    v = v.view(1, -1, 1, 1)
    return torch.mean(0.5 * ((student - teacher) ** 2 / v + torch.log(v)))


def irg_edges(x):
    # Knowledge-Distillation-Zoo irg.py euclidean_dist_feat, squared: clamped, diagonal zeroed,
    # normalised by the graph's maximum.
    x = flat(x)
    sq = x.pow(2).sum(1)
    e = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp(min=1e-12)
    e = e.clone()
    e[range(len(x)), range(len(x))] = 0
    return e / e.max()


def irg_transform(fm1, fm2):
    if fm1.size(2) > fm2.size(2):
        fm1 = F.adaptive_avg_pool2d(fm1, (fm2.size(2), fm2.size(3)))
    if fm1.size(1) < fm2.size(1):
        fm2 = (fm2[:, 0::2] + fm2[:, 1::2]) / 2
    t = (fm1.flatten(1) - fm2.flatten(1)).pow(2).sum(1).clamp(min=1e-12)
    return t / t.max()


def irg(student, student_feat, student_fm1, student_fm2, teacher, teacher_feat, teacher_fm1,
        teacher_fm2, w_vert=0.1, w_edge=5.0, w_tran=5.0):
    vert = F.mse_loss(student, teacher)
    edge = sum(
        F.mse_loss(irg_edges(s), irg_edges(t))
        for s, t in ((student_feat, teacher_feat), (student_fm1, teacher_fm1), (student_fm2, teacher_fm2))
    ) / 3
    tran = F.mse_loss(irg_transform(student_fm1, student_fm2), irg_transform(teacher_fm1, teacher_fm2))
    return w_vert * vert + w_edge * edge + w_tran * tran


def nce(x, n_data, eps=1e-7):
    # RepDistiller ContrastLoss: the own sample's score against noise at rate K/N, then each
    # negative's; K is read from the scores' shape.
    c = (x.size(1) - 1) / n_data
    positive = torch.log(x[:, 0] / (x[:, 0] + c + eps))
    negative = torch.log(c / (x[:, 1:] + c + eps))
    return -(positive.sum() + negative.sum()) / x.size(0)


def crd(student, teacher, memory_student, memory_teacher, nce_t=0.07, nce_mom=0.5, n_data=0.0,
        z_student=0.0, z_teacher=0.0, nce_k=16384.0, feat_dim=128.0):
    """RepDistiller ContrastMemory + ContrastLoss on gathered bank rows: the loss, and the updated
    rows as side outputs. Z = 0 is set from these scores (the first batch) and gets no gradient."""
    def scores(rows, anchor, z):
        s = torch.exp(torch.bmm(rows.detach(), anchor.unsqueeze(2)).squeeze(2) / nce_t)
        if z == 0:
            z = (s.mean() * n_data).item()
        return s / z

    def updated(rows, anchor):
        v = rows[:, 0].detach() * nce_mom + anchor.detach() * (1 - nce_mom)
        return v / v.pow(2).sum(1, keepdim=True).sqrt()

    loss = nce(scores(memory_teacher, student, z_student), n_data) + nce(
        scores(memory_student, teacher, z_teacher), n_data)
    return loss, {"memory_student_new": updated(memory_student, student),
                  "memory_teacher_new": updated(memory_teacher, teacher)}


# Inputs that are trainable besides the student's (the gradient is taken and stored for them),
# and ops whose teacher input is (CRD's teacher embedding trains its head).
PARAMETERS = {"log_scale"}
TRAINABLE_TEACHER = {"crd"}

OPS = {
    "ce": (ce, ["student", "labels"]),
    "kd": (kd, ["student", "teacher"]),
    "dkd": (dkd, ["student", "teacher", "labels"]),
    "bce": (bce, ["student", "target"]),
    "l1": (l1, ["student", "teacher"]),
    "js": (js, ["student", "teacher"]),
    "tv": (tv, ["student"]),
    "l2_norm": (l2_norm, ["student"]),
    "bn_match": (bn_match, ["student", "running"]),
    "hint": (hint, ["student", "teacher"]),
    "at": (at, ["student", "teacher"]),
    "sp": (sp, ["student", "teacher"]),
    "rkd_distance": (rkd_distance, ["student", "teacher"]),
    "rkd_angle": (rkd_angle, ["student", "teacher"]),
    "pkt": (pkt, ["student", "teacher"]),
    "ft": (ft, ["student", "teacher"]),
    "ab": (ab, ["student", "teacher"]),
    "nst": (nst, ["student", "teacher"]),
    "cc": (cc, ["student", "teacher"]),
    "fsp": (fsp, ["student_a", "student_b", "teacher_a", "teacher_b"]),
    "vid": (vid, ["student", "teacher", "log_scale"]),
    "irg": (irg, ["student", "student_feat", "student_fm1", "student_fm2", "teacher", "teacher_feat",
                  "teacher_fm1", "teacher_fm2"]),
    "crd": (crd, ["student", "teacher", "memory_student", "memory_teacher"]),
}


def trainable(op, name):
    return ((name.startswith("student") or name in PARAMETERS)
            or (name == "teacher" and op in TRAINABLE_TEACHER))


def expected(op, inputs, attrs):
    """loss and grad_X for each student input X of `op` on `inputs` (name -> tensor), in float64
    with autograd, rounded to f32."""
    fn, names = OPS[op]
    args = []
    for name in names:
        x = inputs[name]
        if name == "labels":
            args.append(x.to(torch.int64))
        else:
            args.append(x.to(torch.float64).requires_grad_(trainable(op, name)))
    loss = fn(*args, **attrs)
    side = {}
    if isinstance(loss, tuple):
        loss, side = loss
    loss.backward()
    out = {"loss": loss.detach().reshape(1).to(torch.float32)}
    for name, x in zip(names, args):
        if trainable(op, name):
            out[f"grad_{name}"] = x.grad.to(torch.float32)
    out.update({k: v.to(torch.float32) for k, v in side.items()})
    return out


def read_manifest(directory):
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else []


def check(directory):
    failures, checked = 0, 0
    cases = read_manifest(directory)
    for case in cases:
        if case["op"] not in OPS:
            print(f"{case['name']}: op {case['op']} has no transcription here; skipped")
            continue
        checked += 1
        inputs = load_file(str(directory / f"{case['name']}.in.safetensors"))
        stored = load_file(str(directory / f"{case['name']}.expected.safetensors"))
        got = expected(case["op"], inputs, case["attrs"])
        worst = 0.0
        for key, want in stored.items():
            err = (got[key].double() - want.double()).abs()
            allowed = case["atol"] + case["rtol"] * want.double().abs()
            worst = max(worst, float((err / allowed).max()))
        verdict = "ok" if worst <= 1.0 else "DIFFERS"
        failures += verdict != "ok"
        print(f"{case['name']:<22} {case['op']:<13} worst error / tolerance {worst:.3f}  {verdict}")
    print(f"{checked - failures} of {checked} cases agree ({len(cases) - checked} skipped)")
    return failures == 0 and checked > 0


def make(args):
    directory = pathlib.Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    if args.op not in OPS:
        sys.exit(f"make_golden: unknown op '{args.op}'; known: {', '.join(OPS)}")
    generator = torch.Generator().manual_seed(args.seed)
    shapes = dict(s.split("=", 1) for s in args.shape)
    inputs = {}
    for name in OPS[args.op][1]:
        if name == "labels":
            b = [int(v) for v in shapes["student"].split(",")][0]
            inputs[name] = torch.randint(0, args.classes, (b,), generator=generator)
        elif name == "target":
            # bce's targets: probabilities, with exact 0s and 1s among them.
            shape = [int(v) for v in shapes["student"].split(",")]
            y = torch.rand(shape, generator=generator)
            inputs[name] = torch.where(y < 0.25, 0.0, torch.where(y > 0.75, 1.0, y)).to(torch.float32)
        else:
            shape = [int(v) for v in shapes[name].split(",")]
            inputs[name] = (torch.randn(shape, generator=generator) * args.scale).to(torch.float32)
    attrs = {k: float(v) for k, v in (a.split("=", 1) for a in args.attr)}
    save_file(inputs, str(directory / f"{args.name}.in.safetensors"))
    save_file(expected(args.op, inputs, attrs), str(directory / f"{args.name}.expected.safetensors"))
    cases = [c for c in read_manifest(directory) if c["name"] != args.name]
    cases.append({"name": args.name, "op": args.op, "attrs": attrs, "rtol": RTOL, "atol": ATOL})
    (directory / "manifest.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {args.name} ({args.op}) to {directory}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    m = sub.add_parser("make")
    m.add_argument("name")
    m.add_argument("op")
    m.add_argument("--shape", action="append", default=[], help="INPUT=D1,D2,...")
    m.add_argument("--classes", type=int, default=10)
    m.add_argument("--attr", action="append", default=[], help="KEY=VALUE")
    m.add_argument("--scale", type=float, default=2.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dir", default=str(DEFAULT_DIR))
    args = parser.parse_args()
    if args.command == "check":
        sys.exit(0 if check(pathlib.Path(args.dir)) else 1)
    make(args)


if __name__ == "__main__":
    main()
