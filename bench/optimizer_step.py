"""What fastai's own optimizers cost against clfapp's former torch-foreach wrapper, side by side
in one run: a whole tf_efficientnet_lite0 training step at 128 px, and the optimizer step alone.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/optimizer_step.py [--rounds 30] [--bs 32]
        [--repeats 30] [--threads 2] [--precision auto|fp32|bf16]

The former optimizers (models/optim.py at commit b15d7cc: torch's foreach AdamW / SGD / RAdam
under `DecoupledWD`, an OptimWrapper with hand-written decoupled weight decay, do_wd and
Lookahead) are read from git into a temporary module, so this needs the repository's history.

1. Whole step: forward, loss, backward, optimizer step and zero_grad (what a fastai Learner does
   per batch), on a fixed batch of random `--bs` x 3 x 128 x 128 images, model and optimizer
   as clfapp trains them: lite0 (pretrained=False: speed does not depend on the weights) with
   12 classes in channels_last, every layer trainable, two fastai parameter groups, do_wd=False
   on norm and bias, wd 0.01; forward and loss under CPU bf16 autocast when `--precision`
   says so (auto: where clfapp's train.precision = auto would, CPUs with native bf16).
   Variants, each with its own copy of the same start weights:
   - former adam (torch AdamW foreach under the wrapper), the batch in channels_last;
   - fastai Adam (clfapp's adam now), the batch in channels_last;
   - fastai Adam, the batch left NCHW: what fastai's ChannelsLast callback does (it converts
     the model only; the first convolution then reorders the input itself).
   After 2 untimed steps each, the variants take turns step by step (`--rounds` timed steps
   each, the order reversed every other round), so the load of other processes on a shared
   machine falls on all of them alike; the table gives each variant's median and fastest
   step, the ratio of its median to the former adam's, and the median of the round-by-round
   ratios.
2. Optimizer step alone: the same model after one real backward pass, gradients kept fixed;
   each optimizer steps its own copy; they take turns step by step; median ms over `--repeats`
   steps after 3 warm-up steps.
The figures of 2026-12-07 are in models/optim.py's docstring (and the batch layout's in
train._precision_callbacks'). Not a test.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FORMER = "b15d7cc9f66a0bfd3f85136059e909d454e5f729"   # the last commit with the wrapper


def former_optim():
    """models/optim.py as of FORMER, imported as clfapp.models.optim_former (its relative
    imports of clfapp.config then resolve as they did)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{FORMER}:app/clfapp/models/optim.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "optim_former.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("clfapp.models.optim_former", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lite0(seed: int = 0):
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=12)


def groups(net) -> list:
    """fastai-style parameter groups: body, then classifier (what freeze_to(-1) keeps)."""
    head = set(id(p) for p in net.get_classifier().parameters())
    return [[p for p in net.parameters() if id(p) not in head],
            [p for p in net.parameters() if id(p) in head]]


def build(opt_func, net):
    """An optimizer over `net` as a fastai Learner leaves it: lr and wd set, do_wd flags."""
    from fastai.torch_core import norm_bias_params

    opt = opt_func(groups(net), lr=1e-3)
    for p in norm_bias_params(net, True):
        opt.state[p]["do_wd"] = False
    opt.set_hypers(wd=0.01, lr=1e-3)
    return opt


def optimizers(former, train) -> dict:
    """name → (former opt_func, fastai opt_func) for the optimizer-alone table."""
    from dataclasses import replace

    from clfapp.models import optim
    look = replace(train, lookahead_k=6)
    return {
        "adam": (former.make("adam", train), optim.make("adam", train)),
        "sgd": (former.make("sgd", train), optim.make("sgd", train)),
        "radam": (former.make("radam", train), optim.make("radam", train)),
        "adam + lookahead 6": (former.make("adam", look), optim.make("adam", look)),
    }


def time_whole_steps(variants: dict, x, y, rounds: int, bf16: bool,
                     warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per training step for each variant (model, opt, batch layout): `warmup` untimed
    steps each, then `rounds` rounds of one timed step per variant in turn (the order reversed
    every other round)."""
    import torch
    import torch.nn.functional as F

    def step(net, opt, xb):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(xb).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    batches = {"channels_last": x.contiguous(memory_format=torch.channels_last), "NCHW": x}
    for net, opt, layout in variants.values():
        for _ in range(warmup):
            step(net, opt, batches[layout])
    times = {name: [] for name in variants}
    order = list(variants.items())
    for r in range(rounds):
        for name, (net, opt, layout) in order if r % 2 == 0 else order[::-1]:   # no variant always first
            t0 = time.perf_counter()
            step(net, opt, batches[layout])
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    return times


def time_opt_steps(opts: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """ms per opt.step() for each optimizer, taking turns step by step; gradients stay fixed."""
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return "?"
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    return f"{name} ({', '.join(sorted(flags & {'avx2', 'avx512f', 'amx_bf16', 'avx512_bf16'}))})"


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30,
                    help="rounds of the whole-step table (one timed step per variant each)")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=30, help="timed steps of the optimizer-alone table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="of the whole step, as train.precision")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from clfapp.models.callbacks import bf16_enabled
    bf16 = bf16_enabled(args.precision)

    from clfapp.config import TrainConfig
    from clfapp.models import optim
    former, train = former_optim(), TrainConfig()
    base = lite0()
    n = sum(p.numel() for p in base.parameters())
    print(f"tf_efficientnet_lite0, 12 classes: {n / 1e6:.2f} M parameters in "
          f"{len(list(base.parameters()))} tensors; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {cpu_name()}")

    # 1. the whole step
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.bs, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 12, (args.bs,), generator=g)
    variants = {}
    for name, opt_func, layout in (("former adam (torch foreach)", former.make("adam", train), "channels_last"),
                                   ("fastai Adam", optim.make("adam", train), "channels_last"),
                                   ("fastai Adam, batch NCHW", optim.make("adam", train), "NCHW")):
        net = copy.deepcopy(base).train().to(memory_format=torch.channels_last)
        variants[name] = (net, build(opt_func, net), layout)
    print(f"\n1. whole training step, bs {args.bs} at {args.size} px, model in channels_last, "
          f"{'bf16 autocast' if bf16 else 'fp32'}: {args.rounds} rounds of one step per variant "
          f"in turn, after 2 untimed steps each")
    times = time_whole_steps(variants, x, y, args.rounds, bf16)
    ref = times["former adam (torch foreach)"]
    print(f"\n{'variant':30s} {'median s':>9s} {'min s':>7s} {'ratio of medians':>17s} "
          f"{'median of round ratios':>23s}")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, ref)]
        print(f"{name:30s} {statistics.median(ts):9.3f} {min(ts):7.3f} "
              f"{statistics.median(ts) / statistics.median(ref):17.3f} {statistics.median(ratios):23.3f}")

    # 2. the optimizer step alone
    torch.nn.functional.cross_entropy(base(x[:8]), y[:8]).backward()
    opts = {}
    for name, (old, new) in optimizers(former, train).items():
        for label, opt_func in ((f"former {name} (torch foreach)", old), (f"fastai {name}", new)):
            net = copy.deepcopy(base)
            for p, q in zip(base.parameters(), net.parameters()):
                q.grad = p.grad.clone()   # deepcopy does not copy .grad
            opts[label] = build(opt_func, net)
    print(f"\n2. optimizer step alone (fixed gradients), {args.repeats} timed steps after 3 warm-up")
    print(f"{'optimizer':42s} {'median ms':>10s} {'min':>8s} {'max':>8s}")
    alone = time_opt_steps(opts, args.repeats)
    for name, ms in alone.items():
        print(f"{name:42s} {statistics.median(ms):10.1f} {min(ms):8.1f} {max(ms):8.1f}")

    # the same question from the two tables: the optimizer's extra time over a whole step
    extra = {f: f(alone["fastai adam"]) - f(alone["former adam (torch foreach)"])
             for f in (statistics.median, min)}
    print(f"\nfastai adam's extra step time over the former adam's, as a share of a whole step: "
          f"{extra[statistics.median] / 1e3 / statistics.median(ref):+.2%} (medians), "
          f"{extra[min] / 1e3 / min(ref):+.2%} (fastest of each)")


if __name__ == "__main__":
    main()
