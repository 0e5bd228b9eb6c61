#!/usr/bin/env python3
"""The peer of `wgdistill bench`: the same whole training steps (and sgemm at the bench's matmul
shapes) in PyTorch, on the CPU or CUDA, written as JSON rows that `wgdistill bench --compare`
reads (`kernel`, `shape` as wgdistill names them, `seconds` per run, `peer`).

    python3 tools/peers/torch_steps.py --device cpu --threads 2 --out peer-cpu.json
    python3 tools/peers/torch_steps.py --device cuda --matmul 1024,4096 --out peer-cuda.json
    wgdistill bench --compare peer-cpu.json
    python3 tools/peers/torch_steps.py --threads 2 --profile cnn_step   # PyTorch's time by op

`--profile CASE` prints where one step's time goes by operator (torch.profiler, self time per
step), the peer's side of `wgdistill bench --filter CASE --profile`: the two tables together
tell which kernels make the gap.

The steps, as wgdistill's bench suite builds them (batch 128 of 1×28×28 images, 10 classes,
SGD lr 0.01, momentum 0.9, weight decay 5e-4, eager mode):
  kd_step       MLP [512, 512] teacher (frozen, eval) → MLP [32]: 0.1·CE + 0.9·KD (T = 4)
  cnn_step      CNN [32, 64] (conv3×3-BN-ReLU-maxpool per block, linear classifier): CE
  resnet8_step  CIFAR ResNet-8, widths [16, 32, 64]: CE
  feature_step  kd_step + 10·hint(Linear(32 → 512) of hidden.0 → teacher hidden.1) + 25·RKD distance
matmul: C = A·B in float32 with TF32 off (the peer of wgdistill's matmul cases).
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128


class Mlp(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        widths = [784] + list(hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x):
        taps = []
        h = torch.flatten(x, 1)
        for layer in self.hidden:
            h = F.relu(layer(h))
            taps.append(h)
        return self.head(h), taps


class Cnn(nn.Module):
    def __init__(self, channels):
        super().__init__()
        layers, cin = [], 1
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        size = 28 // 2 ** len(channels)
        self.classifier = nn.Linear(cin * size * size, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1)), []


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, depth, widths):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, w in enumerate(widths):
            for b in range(n):
                blocks.append(Block(cin, w, 2 if stage > 0 and b == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        h = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)), []


def kd_loss(s, t, temperature=4.0):
    return F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean") * temperature**2


def rkd_distance(s, t):
    def pdist(e):
        sq = e.pow(2).sum(1)
        d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
        d[range(len(e)), range(len(e))] = 0
        return d

    with torch.no_grad():
        dt = pdist(t)
        dt = dt / dt[dt > 0].mean()
    ds = pdist(s)
    return F.smooth_l1_loss(ds / ds[ds > 0].mean(), dt)


def make_step(name, device):
    """The step's closure: one optimizer step on a fixed batch."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    teacher, adapter = None, None
    if name in ("kd_step", "feature_step"):
        student, teacher = Mlp([32]), Mlp([512, 512])
    elif name == "cnn_step":
        student = Cnn([32, 64])
    else:
        student = ResNet(8, [16, 32, 64])
    params = list(student.parameters())
    if name == "feature_step":
        adapter = nn.Linear(32, 512).to(device)
        params += list(adapter.parameters())
    student.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        logits, taps = student(x)
        if teacher is None:
            loss = F.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                t_logits, t_taps = teacher(x)
            loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * kd_loss(logits, t_logits)
            if adapter is not None:
                loss = loss + 10.0 * F.mse_loss(adapter(taps[0]), t_taps[1]) + 25.0 * rkd_distance(logits, t_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


SHAPES = {
    "kd_step": "mlp[512,512]→mlp[32] b128",
    "cnn_step": "cnn[32,64] b128",
    "resnet8_step": "resnet8[16,32,64] b128",
    "feature_step": "mlp[512,512]→mlp[32] kd+hint+rkd b128",
}


def timed(fn, device, seconds):
    """Seconds per call: warm-up, then as many calls as fit in about `seconds`, fastest of 3."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    reps = max(1, min(1000, int(seconds / max(time.perf_counter() - start, 1e-6))))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def profile(name, device, steps=20):
    """Prints one step's self time by operator, averaged over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = make_step(name, device)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    print(f"{name} {SHAPES[name]}: {total / steps / 1e3:.3f} ms per step (profiled), by operator:")
    for e in events:
        us = getattr(e, key)
        if us / max(total, 1e-9) < 0.005:
            break
        print(f"  {100 * us / total:5.1f}%  {us / steps / 1e3:9.3f} ms  {e.count // steps:3d}×  {e.key}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--matmul", default="256,1024", help="square sgemm sizes, as the bench suite's")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per round")
    parser.add_argument("--profile", choices=sorted(SHAPES), help="print one case's time by operator instead")
    parser.add_argument("--out", help="the JSON to write (needed unless --profile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile, args.device)
        return
    if not args.out:
        parser.error("--out is needed (or --profile CASE)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peer = f"pytorch {torch.__version__} {where}"
    rows = []
    for name, shape in SHAPES.items():
        seconds = timed(make_step(name, args.device), args.device, args.seconds)
        rows.append({"kernel": name, "shape": shape, "seconds": seconds, "samples_per_second": BATCH / seconds, "peer": peer})
        print(f"{name:<14} {shape:<40} {seconds * 1e3:10.3f} ms  {BATCH / seconds:10.0f} samples/s")
    for n in (int(v) for v in args.matmul.split(",") if v):
        a = torch.randn(n, n, device=args.device)
        b = torch.randn(n, n, device=args.device)
        seconds = timed(lambda: torch.matmul(a, b), args.device, args.seconds)
        rows.append({"kernel": "matmul", "shape": f"{n}x{n}x{n}", "seconds": seconds, "gflops": 2 * n**3 / seconds * 1e-9, "peer": peer})
        print(f"{'matmul':<14} {n}x{n}x{n:<32} {seconds * 1e3:10.3f} ms  {2 * n**3 / seconds * 1e-9:10.1f} GFLOP/s")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out} ({peer})")


if __name__ == "__main__":
    main()
