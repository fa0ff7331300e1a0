"""Members → ensemble → distilled student (and a control trained alone) → ONNX → compare.

    python bench/ensemble_distill.py plants [--data ../shared/datasets/plant_seedlings]
    python bench/ensemble_distill.py digits-multi          # multi-label, embedded data
    python bench/ensemble_distill.py plants --skip-training  # reuse runs/ from an earlier run

Each step is one clfapp command, printed before it runs, in the current folder's runs/. The
members share one split (same data.seed) and differ in seed, arch or size; the student and
the control have the same arch, size and epochs, so the control shows what distillation adds.
The last step prints the compare table (quality on the members' validation split; speed on
this machine's CPU, every model side by side in one process). Training uses a GPU when torch
sees one; the comparison always times the CPU.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    "plants": {
        "recipe": str(Path(__file__).resolve().parent / "recipes" / "plants-baseline.toml"),
        "data": "../shared/datasets/plant_seedlings",
        "members": [("m0-lite0-128", ["--arch", "tf_efficientnet_lite0", "--size", "128", "--seed", "1"]),
                    ("m1-lite0-144", ["--arch", "tf_efficientnet_lite0", "--size", "144", "--seed", "2"]),
                    ("m2-lite1-144", ["--arch", "tf_efficientnet_lite1", "--size", "144", "--seed", "3"])],
        "member_epochs": 6,
        "student": ["--arch", "tf_efficientnet_lite0", "--size", "144"],
        "student_epochs": 15,
    },
    "digits-multi": {
        "recipe": "digits-multi",
        "data": None,   # embedded: made in data/digits-multi on first use
        "members": [("m0-r10-32", ["--seed", "1"]),
                    ("m1-r10-32", ["--seed", "2"]),
                    ("m2-r10-40", ["--seed", "3", "--size", "40"])],
        "member_epochs": 12,
        # a student starts from the defaults, not the teacher's recipe: the recipe's training
        # keys are given to it (and to the control, where they match the recipe) by flags
        "student": ["--arch", "resnet10t", "--size", "24", "--no-pretrained", "--lr", "1e-2",
                    "--set", "train.freeze_epochs=0"],
        "student_epochs": 12,
    },
}


def clfapp(*args: str) -> None:
    cmd = [sys.executable, "-m", "clfapp", *args]
    print("$ clfapp " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
                         capture_output=True, text=True)
    lines = [ln for ln in out.stdout.replace("\r", "\n").splitlines()
             if ln.strip() and not set(ln.strip()) <= {"█"}]
    print("\n".join(lines[-8:]), f"\n({time.perf_counter() - t0:.0f} s)", flush=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--data", help="dataset folder (default: the preset's)")
    ap.add_argument("--skip-training", action="store_true", help="reuse the runs already in runs/")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the comparison")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    data = args.data or p["data"]
    if data and not Path(data).is_dir():
        sys.exit(f"{data} not found: pass --data")
    data_flags = ["--data", data] if data else []
    names = [name for name, _ in p["members"]]
    if not args.skip_training:
        for name, flags in p["members"]:
            clfapp("fit", p["recipe"], *data_flags, *flags, "--epochs", str(p["member_epochs"]), "--name", name)
        clfapp("ensemble", *[f"runs/{n}" for n in names], "--name", "ens")
        clfapp("distill", "runs/ens", *p["student"], "--epochs", str(p["student_epochs"]), "--name", "student")
        clfapp("fit", p["recipe"], *data_flags, *p["student"], "--epochs", str(p["student_epochs"]),
               "--seed", "4", "--splits-from", "runs/ens", "--name", "control")
        for run in ("ens", "student"):
            clfapp("export", f"runs/{run}", "--format", "onnx")
    clfapp("compare", *[f"runs/{n}" for n in names], "runs/ens", "runs/student", "runs/control",
           "runs/ens/export-1", "runs/student/export-1", "--threads", str(args.threads),
           "--repeats", "30")


if __name__ == "__main__":
    main()
