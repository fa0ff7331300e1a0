"""Time one optimizer step: fastai's pure-Python Adam vs clfapp's adam (torch foreach AdamW with
fastai's decoupled, norm/bias-exempt weight decay), and a few neighbours for context.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/optimizer_step.py [--repeats 30] [--threads 2]

Model: timm tf_efficientnet_lite0, pretrained=False, num_classes=12, split as fastai does into
two parameter groups (body, classifier) with do_wd=False on norm and bias parameters (what a
Learner with wd_bn_bias=False sets). Gradients come from one real forward/backward pass on a
batch of 8 random 128 px images and are kept fixed; each optimizer steps its own copy of the
weights; they take turns, step by step. Prints a table of ms per step (median, min, max over the repeats after warm-up).
Not a test.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_with_grads(seed: int = 0):
    """lite0 (12 classes) after one real backward pass: every parameter holds a gradient."""
    import timm
    import torch

    torch.manual_seed(seed)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=12)
    x, y = torch.randn(8, 3, 128, 128), torch.randint(0, 12, (8,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    return net


def groups(net) -> list:
    """fastai-style parameter groups: body, then classifier (what freeze_to(-1) keeps)."""
    head = set(id(p) for p in net.get_classifier().parameters())
    return [[p for p in net.parameters() if id(p) not in head],
            [p for p in net.parameters() if id(p) in head]]


def build(name: str, net):
    """An optimizer over `net` as a fastai Learner would leave it: lr, wd set, do_wd flags."""
    from functools import partial

    import torch
    from fastai.optimizer import Adam, OptimWrapper
    from fastai.torch_core import norm_bias_params

    from clfapp.models import optim

    factory = {
        "fastai Adam": partial(Adam, mom=0.9, sqr_mom=0.99, eps=1e-5),
        "clfapp adam": optim.make("adam"),
        "clfapp sgd": optim.make("sgd"),
        "torch AdamW foreach (old clfapp adam)": partial(
            OptimWrapper, opt=torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, foreach=True),
    }[name]
    opt = factory(groups(net), lr=1e-3)
    for p in norm_bias_params(net, True):
        opt.state[p]["do_wd"] = False
    opt.set_hypers(wd=0.01, lr=1e-3)
    return opt


def time_round_robin(opts: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """ms per opt.step() for each optimizer, taking turns step by step so that the load of
    other processes on a shared machine falls on all of them alike; gradients stay fixed."""
    for opt in opts.values():
        assert all(p.grad is not None for p, *_ in opt.all_params()), "every parameter needs a grad"
        for _ in range(warmup):
            opt.step()
    out = {name: [] for name in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = model_with_grads()
    n = sum(p.numel() for p in base.parameters())
    print(f"tf_efficientnet_lite0, 12 classes: {n / 1e6:.2f} M parameters in "
          f"{len(list(base.parameters()))} tensors; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.repeats} timed steps after 3 warm-up steps")
    print(f"{'optimizer':40s} {'median ms':>10s} {'min':>8s} {'max':>8s}")
    opts = {}
    for name in ("fastai Adam", "clfapp adam", "clfapp sgd", "torch AdamW foreach (old clfapp adam)"):
        net = copy.deepcopy(base)
        for p, q in zip(base.parameters(), net.parameters()):
            q.grad = p.grad.clone()   # deepcopy does not copy .grad
        opts[name] = build(name, net)
    for name, ms in time_round_robin(opts, args.repeats).items():
        print(f"{name:40s} {statistics.median(ms):10.1f} {min(ms):8.1f} {max(ms):8.1f}")


if __name__ == "__main__":
    main()
