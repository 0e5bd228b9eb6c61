"""Check wgdistill's CNN training against PyTorch, step for step, on real Fashion-MNIST batches.

Two checks on wgdistill's `cnn` (channels [32, 64], batch 128, as in configs/results.toml):

1. One SGD step at lr 1 from PyTorch's initial weights: wgdistill's weight change is its
   gradient, compared with PyTorch's autograd in float64; the BatchNorm running statistics too.
2. N SGD steps (the students' recipe in configs/results.toml: lr 0.05, momentum 0.9, weight
   decay 5e-4) over the same batches in the same order (wgdistill's seeded shuffle, reproduced
   here): wgdistill's weights against PyTorch's in float64, next to PyTorch's own float32 run
   against float64 for scale. Training at this learning rate amplifies rounding: after 20 steps
   PyTorch's float32 run is some 10% away from its float64 one, so the default is 10. (AdamW's first steps move each weight by about ±lr whatever the
   gradient's size, so weights whose gradient is near zero take either sign in float32, in
   PyTorch as here; its update rule is checked exactly in tests/training_kernels.rs.)

With `--teacher FILE` (a wgdistill or PyTorch checkpoint of that CNN), a third check:

3. One step of a FitNet student (CNN [8, 16], ce + 100·hint on features.7 through a 1×1-conv
   adapter, as in configs/results.toml): the student's and the adapter's gradients (read from
   the momentum buffers after one step at weight decay 0) against PyTorch in float64.

It runs the `wgdistill` binary (build it first: `cargo build --release`), writes its files under
`--work`, and exits non-zero when a check fails. Not part of CI (it needs PyTorch):

    pip install torch safetensors
    python3 examples/pytorch_teacher/check_training.py [--backend vulkan|gl] [--steps 10]
"""

import argparse
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_teacher import Cnn, load  # noqa: E402

MASK = (1 << 64) - 1


def epoch_order(n, seed, epoch):
    """wgdistill's data::epoch_order: a seeded xorshift Fisher-Yates shuffle of 0..n."""
    order = list(range(n))
    state = (((seed ^ ((epoch * 0x9E3779B97F4A7C15) & MASK)) * 0xD1342543DE82EF95) & MASK) | 1
    for i in range(n - 1, 0, -1):
        state ^= (state << 13) & MASK
        state ^= state >> 7
        state ^= (state << 17) & MASK
        j = state % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def config(batch, samples, optimizer):
    return f"""seed = 0
[data]
dataset = "fashion-mnist"
batch_size = {batch}
train_limit = {samples}
test_limit = {batch}
[models.net]
arch = "cnn"
channels = [32, 64]
checkpoint = "init.safetensors"
[[stages]]
name = "check"
train = ["net"]
epochs = 1
optimizer = {optimizer}
losses = [{{ kind = "ce", weight = 1.0 }}]
"""


def fitnet_config(batch, teacher, hint):
    return f"""seed = 0
[data]
dataset = "fashion-mnist"
batch_size = {batch}
train_limit = {batch}
test_limit = {batch}
[models.teacher]
arch = "cnn"
channels = [32, 64]
checkpoint = "{teacher}"
[models.net]
arch = "cnn"
channels = [8, 16]
checkpoint = "student-init.safetensors"
[[stages]]
name = "check"
train = ["net"]
teachers = ["teacher"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 1.0, momentum = 0.9, weight_decay = 0.0 }}
losses = [
  {{ kind = "ce", weight = 1.0 }},
  {{ kind = "hint", weight = {hint}, student_tap = "features.7", teacher_tap = "features.7", adapter = "conv1x1" }},
]
"""


def check_fitnet(args, x, y, batch):
    """Gradients of ce + 100·hint through a 1×1-conv adapter: after one SGD step with momentum
    and no weight decay, each momentum buffer is its parameter's gradient, and the adapter's
    initial weights are its new ones plus that gradient."""
    hint = 100.0
    torch.manual_seed(3)
    student = {k: v.contiguous() for k, v in Cnn((8, 16)).state_dict().items()}
    save_file(student, os.path.join(args.work, "student-init.safetensors"))
    teacher_file = os.path.abspath(args.teacher)
    run_wgdistill(args, fitnet_config(batch, teacher_file, hint), "fitnet-step")
    state = load_file(os.path.join(args.work, "fitnet-step", "checkpoints",
                                   "net.train-state.safetensors"))
    grads = {k[len("optimizer."):-len(".0")]: v.double()
             for k, v in state.items() if k.startswith("optimizer.")}
    names = [k for k in state if k.startswith("adapters.")]
    adapter = {k: (state[k].double() + grads[k]).requires_grad_() for k in names}
    weight, bias = (next(adapter[k] for k in names if k.endswith(s)) for s in ("weight", "bias"))
    teacher = model(load_file(teacher_file), torch.float64).eval()
    net = model(student, torch.float64, (8, 16))
    xb = x[:batch].double()
    with torch.no_grad():
        target = teacher.features(xb)
    features = net.features(xb)
    loss = (torch.nn.functional.cross_entropy(net.classifier(torch.flatten(features, 1)), y[:batch])
            + hint * torch.nn.functional.mse_loss(
                torch.nn.functional.conv2d(features, weight, bias), target))
    loss.backward()
    want = {k: p.grad for k, p in net.named_parameters()}
    want.update({k: adapter[k].grad for k in names})
    worst = max(relative(grads[k], want[k]) for k in want)
    print(f"one FitNet step (ce + {hint:g}·hint through a 1×1-conv adapter): gradients within "
          f"{worst:.1e} of PyTorch float64")
    return worst > 1e-3


def run_wgdistill(args, text, name):
    path = os.path.join(args.work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    out = os.path.join(args.work, name)
    env = dict(os.environ, WGPU_BACKEND=args.backend)
    done = subprocess.run([args.wgdistill, "train", path, "--out", out, "--data", args.data],
                          cwd=args.work, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"wgdistill failed: {done.stderr.strip()}")
    return load_file(os.path.join(out, "checkpoints", "net.safetensors"))


def model(state, dtype, channels=(32, 64)):
    m = Cnn(channels).to(dtype)
    m.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    m.train()
    return m


def relative(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("WGDISTILL_DATA",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--wgdistill", default=os.path.abspath("target/release/wgdistill"))
    p.add_argument("--backend", default="vulkan")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--work", default=os.path.abspath("wgdistill-check"))
    p.add_argument("--teacher", help="a CNN [32, 64] checkpoint: also check a FitNet step")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    batch = 128
    torch.manual_seed(1)
    init = {k: v.contiguous() for k, v in Cnn((32, 64)).state_dict().items()}
    save_file(init, os.path.join(args.work, "init.safetensors"))
    x, y = load(args.data, "train")
    failed = False

    # 1. One SGD step at lr 1: the weight change is the gradient.
    got = run_wgdistill(args, config(batch, batch, "{ kind = \"sgd\", lr = 1.0 }"), "one-step")
    m = model(init, torch.float64)
    torch.nn.functional.cross_entropy(m(x[:batch].double()), y[:batch]).backward()
    params, buffers = dict(m.named_parameters()), m.state_dict()
    worst = 0.0
    for k, v in sorted(got.items()):
        if k.endswith("num_batches_tracked"):
            continue
        if k in params:
            worst = max(worst, relative(init[k].double() - v.double(), params[k].grad))
        else:
            worst = max(worst, relative(v, buffers[k]))
    print(f"one SGD step: gradients and running statistics within {worst:.1e} (relative to "
          f"each tensor's largest) of PyTorch float64")
    failed |= worst > 1e-3

    # 2. N SGD steps over the same batches in the same order.
    steps = args.steps
    sgd = "{ kind = \"sgd\", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }"
    got = run_wgdistill(args, config(batch, batch * steps, sgd), "sgd-steps")
    order = epoch_order(batch * steps, 0, 0)
    trained = {}
    for dtype in (torch.float64, torch.float32):
        m = model(init, dtype)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for s in range(steps):
            idx = torch.tensor(order[s * batch:(s + 1) * batch])
            loss = torch.nn.functional.cross_entropy(m(x[idx].to(dtype)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        trained[dtype] = m.state_dict()
    exact = trained[torch.float64]
    names = [k for k in exact if not k.endswith("num_batches_tracked")]
    ours, worst_name = max((relative(got[k], exact[k]), k) for k in names)
    theirs, their_name = max((relative(trained[torch.float32][k], exact[k]), k) for k in names)
    print(f"{steps} SGD steps: wgdistill within {ours:.1e} of PyTorch float64 ({worst_name}); "
          f"PyTorch float32 within {theirs:.1e} ({their_name})")
    failed |= ours > max(2 * theirs, 1e-3)
    if args.teacher:
        failed |= check_fitnet(args, x, y, batch)
    print("FAILED" if failed else "ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
