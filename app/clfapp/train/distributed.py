"""Data-parallel training over several processes: fastai's DistributedTrainer on Hugging Face
accelerate (DistributedDataParallel; gloo on CPUs, nccl on GPUs).

Two ways in, the same code path:

- `accelerate launch --multi_gpu --num_processes N -m clfapp fit ...` (or `torchrun
  --nproc_per_node N -m clfapp fit ...`): the launcher sets RANK / WORLD_SIZE / MASTER_ADDR /
  MASTER_PORT and every process joins through env://.
- `clfapp fit ... --processes N` (`launch` below) starts the N processes itself: the same
  command line without --processes, with the rank in the environment. The parent hosts the
  rendezvous store (a TCPStore on a port the OS picks, so two runs started at once never share
  a port, unlike torchrun's default 29500), waits, and stops the other ranks as soon as one
  fails. It is not accelerate's launcher because, in accelerate 1.15, `accelerate launch --cpu
  --num_processes N` starts one process (a CPU run of several needs mpirun), and not torchrun
  because torchrun turns a rank's exit 2 or 130 into its own error report and exit 1: clfapp's
  exit codes (2 a usage error, 130 Ctrl-C, 143 SIGTERM) and one-line errors are kept this way.

What each process does (train.fit, cli/fit.py): rank 0 claims the run folder and tells the
others its name; ranks > 0 do the same work into a private temporary folder, deleted at the
end, and skip the end (bundle, evaluation, report). Rank 0 loads data / builds the image cache
and converts pip-shipped weights first, the others after a barrier (`rank0_first`). `lr =
auto`: rank 0 runs the finder alone and broadcasts the LR. The global batch stays train.bs
(each of N processes takes bs // N), so a recipe optimises as in one process; on a CPU each
process gets cores // N torch threads.

Metrics: fastai gathers each validation batch's predictions and targets from every rank
(Learner.to_detach -> DistributedDL.to_detach, which drops the padding DistributedDL adds to
make the shards equal), so every rank computes the whole validation set's figures and takes
the same best-epoch / early-stopping / plateau decisions. valid_loss is the loss function on
all gathered outputs (fastai's own AvgLoss would also count the up to N - 1 padded duplicates);
train_loss is fastai's smoothed loss of every rank's batches (gathered and averaged per step).
A non-finite training loss stops every rank at once (models/callbacks.on_any_rank).

Not with several processes (refused in one line): train.budget (each rank would plan alone and
DDP would hang when their plans differ), --full, --resume; no checkpoint is written.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

STORE_PORT_ENV = "CLFAPP_DIST_STORE_PORT"
"""Set by `launch`: the port of the rendezvous store its parent process hosts."""

TIMEOUT = timedelta(hours=2)
"""How long a rank waits in a collective: ranks > 0 wait while rank 0 builds the image cache
or runs the LR finder alone (torch's default, 30 min, is too short for a large cache)."""


def world_size() -> int:
    """Processes in this run (1 without a launcher): WORLD_SIZE, as torchrun/accelerate set it."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes the run folder and talks."""
    return rank() == 0


def init() -> None:
    """Join the process group (once per process; nothing in a single-process run).

    Also: torch threads = cores // N on a CPU (torchrun sets OMP_NUM_THREADS=1), the GPU of
    LOCAL_RANK on CUDA, and ranks > 0 silent on stdout (errors still reach stderr).
    """
    if not active():
        return
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    n, r = world_size(), rank()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", r)))
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", n) or n)
        torch.set_num_threads(max(1, cpu_count() // local))
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        port = os.environ.get(STORE_PORT_ENV)
        if port:   # started by `launch`: its parent hosts the store
            store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(port), n,
                                  is_master=False, timeout=TIMEOUT)
            dist.init_process_group(backend, store=store, rank=r, world_size=n, timeout=TIMEOUT)
        else:      # accelerate launch / torchrun: env://
            dist.init_process_group(backend, timeout=TIMEOUT)
    if r > 0:
        sys.stdout = open(os.devnull, "w")   # one voice: rank 0's


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def check(cfg, n: int, full: bool = False, resume: bool = False) -> None:
    """What does not work with `n` processes: one clear line (UsageError, exit 2)."""
    from ..errors import UsageError
    if resume:
        raise UsageError("--resume is for single-process runs (a run of several processes "
                         "writes no checkpoint); run it without a launcher or --processes")
    if full:
        raise UsageError("--full does not work with several processes yet; drop one of them")
    if cfg.train.budget:
        raise UsageError("--budget (train.budget) does not work with several processes yet: "
                         "each would plan its epochs alone; drop one of them (--set train.budget= "
                         "turns a recipe's budget off)")
    if cfg.train.bs < n:
        raise UsageError(f"train.bs {cfg.train.bs} is smaller than the {n} processes: each "
                         f"takes bs // {n} images a step; use --bs {n} or more")


def per_process(cfg):
    """`cfg` with each process's share of the batch (bs // N): the global batch stays train.bs."""
    from dataclasses import replace
    n = world_size()
    return replace(cfg, train=replace(cfg.train, bs=cfg.train.bs // n))


def describe(cfg) -> str:
    """The one line saying how the work is split."""
    import torch
    n, bs = world_size(), cfg.train.bs
    where = "nccl, one GPU each" if torch.cuda.is_available() else \
        f"gloo, CPU, {torch.get_num_threads()} torch thread(s) each"
    rest = f"; {bs - bs // n * n} image(s) of train.bs {bs} left unused" if bs % n else ""
    return (f"{n} processes ({where}): each trains on batches of {bs // n}, "
            f"{bs // n * n} images a step in all (train.bs {bs}){rest}; no checkpoint is "
            f"written (--resume is for single-process runs)")


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier()


def rank0_first(fn):
    """fn() in rank 0, then in the others (which then find its cache, weights, files);
    fastai's rank0_first without its dummy Learner. Rank 0 failing still releases the others
    (they fail alike, or the launcher stops them)."""
    if not active():
        return fn()
    if is_main():
        try:
            return fn()
        finally:
            barrier()
    barrier()
    return fn()


def from_rank0(fn):
    """fn() run by rank 0 alone; every rank gets its (picklable) result."""
    if not active():
        return fn()
    import torch.distributed as dist
    box = [None]
    if is_main():
        try:
            box = [("ok", fn())]
        except BaseException as e:
            box = [("error", f"{type(e).__name__}: {e}")]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    how, value = box[0]
    if how == "error":   # rank 0 says what went wrong; here only the exit
        raise SystemExit(2 if value.startswith("UsageError") else 1)
    return value


def run_folder(make):
    """The run folder: rank 0 claims it (make()), ranks > 0 get a private temporary folder
    (deleted by `cleanup`) so exactly one runs/NAME-N is made and every rank can write as if
    alone."""
    if not active():
        return make()
    from pathlib import Path
    path = from_rank0(lambda: str(make()))
    if is_main():
        return Path(path)
    import tempfile
    return Path(tempfile.mkdtemp(prefix=f"clfapp-rank{rank()}-"))


def cleanup(folder) -> None:
    """Ranks > 0: delete the private folder at the end (whatever ended the run)."""
    if active() and not is_main():
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def attach(learn) -> None:
    """Make every later fit of `learn` data-parallel (our DistributedTrainer); ranks > 0 lose
    the progress bar, as fastai's to_distributed does."""
    if not active():
        return
    from fastai.callback.progress import ProgressCallback
    learn.add_cb(_trainer())
    if not is_main():
        learn.remove_cb(ProgressCallback)


def detach(learn) -> None:
    """Unwrap the model and data loaders if a fit ended by an exception (fastai's after_fit,
    which unwraps, runs only when a fit ends or is cancelled): the best weights are loaded
    into, and the bundle saved from, the plain module."""
    if not active():   # attach added nothing
        return
    from ..models.compat import distributed_trainer_base
    for cb in list(learn.cbs):
        if isinstance(cb, distributed_trainer_base()):
            cb.unwrap()
            learn.remove_cb(cb)


def _trainer():
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from ..models.compat import distributed_trainer_base

    class ClfappDistributedTrainer(distributed_trainer_base()):
        """fastai's, with loaders that also broadcast on gloo (compat), SyncBatchNorm only on
        CUDA (it has no CPU kernels), and accelerate told to stay on the CPU without a GPU
        (else it would not distribute)."""
        def __init__(self):
            cuda = torch.cuda.is_available()
            super().__init__(sync_bn=cuda, cpu=not cuda)

        def before_fit(self):
            super().before_fit()
            # valid_loss over the whole validation set, from the gathered (unpadded) outputs:
            # fastai's AvgLoss would also average the padding DistributedDL adds
            self.avg_loss, self.learn.recorder.loss = self.learn.recorder.loss, _whole_loss(self.learn)

        def after_fit(self):
            super().after_fit()
            self.learn.recorder.loss = self.avg_loss

        def unwrap(self):
            if getattr(self, "avg_loss", None) is not None:
                self.learn.recorder.loss, self.avg_loss = self.avg_loss, None
            if isinstance(self.learn.model, DistributedDataParallel):
                self.learn.model = self.learn.model.module
            self.restore_loaders()

    return ClfappDistributedTrainer()


def _whole_loss(learn):
    """The loss of the whole validation set as one metric named "loss" (the Recorder's
    valid_loss): the loss function on all gathered outputs at once."""
    from fastai.metrics import AccumMetric
    return AccumMetric(lambda preds, targs: learn.loss_func(preds, targs), flatten=False, name="loss")


# ---- clfapp fit --processes N ----------------------------------------------------------------

def launch(n: int, args: list[str]) -> int:
    """Run `python -m clfapp fit ARGS` as ranks 0..n-1 on this machine; the exit code of the
    first rank that failed (0 when all succeeded).

    Ctrl-C reaches every rank from the terminal (each saves what it can); SIGTERM to this
    process is passed on to them; when one rank fails the others are stopped (SIGTERM, then
    SIGKILL after a grace time) rather than left waiting for it forever.
    """
    import signal
    import subprocess
    import time

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, n, is_master=True, timeout=TIMEOUT,
                          wait_for_workers=False)
    procs = []
    for r in range(n):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                   LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port),
                   **{STORE_PORT_ENV: str(store.port)})
        procs.append(subprocess.Popen([sys.executable, "-m", "clfapp", "fit", *args], env=env))

    def terminate(signum=signal.SIGTERM, frame=None):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    failed, failed_at, sent = None, 0.0, None
    try:
        while any(p.poll() is None for p in procs):
            if failed is None:
                rc = next((p.returncode for p in procs if p.poll() not in (None, 0)), None)
                if rc is not None:
                    failed, failed_at = _exit_code(rc), time.monotonic()
            if failed is not None:
                # The others usually end on their own (a dead peer fails their next
                # collective; a Ctrl-C reached them all): a grace time first, so rank 0 is
                # not cut off while it saves the best epoch; then SIGTERM, at last SIGKILL.
                waited = time.monotonic() - failed_at
                if waited > GRACE_S and sent is None:
                    sent = signal.SIGTERM
                    terminate(sent)
                elif waited > GRACE_S + 120 and sent == signal.SIGTERM:
                    sent = signal.SIGKILL
                    terminate(sent)
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                pass   # every rank got the Ctrl-C too: let them save and end
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed is None:
        failed = next((_exit_code(p.returncode) for p in procs if p.returncode), 0)
    return failed


GRACE_S = 30
"""After a rank failed, how long the others may take to end on their own before SIGTERM."""


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc   # killed by signal k: 128 + k, as a shell reports it
