"""The default training step under each choice the code makes from the CPU it runs on.

    .venv/bin/python benchmarks/cpu_step_variants.py [--steps 30]

:mod:`nirgan.devices` picks the memory format (channels_last on the CPU) and the precision (bf16
autocast only where bf16 is native: AVX512-BF16 or AMX; else fp32) from measurements on CPUs
with native bf16. This runs params.yaml's default step on synthetic 128 px pairs, each variant in
its own process, one after the other, with the cores the command may use
(:func:`nirgan.cores.available_cores`), and prints steps/s and the ratio to what the code picks
here. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import json, sys
import torch
sys.path.insert(0, sys.argv[4])
from train_speed import default_session, timed
import nirgan.devices as devices
variant = json.loads(sys.argv[2])
if variant.get("layout") == "contiguous":
    devices.memory_format = lambda device: torch.contiguous_format
if variant.get("bf16") == "forced":
    devices.native_bf16 = lambda device: True
import nirgan.training.session as session_mod
session_mod.memory_format, session_mod.effective_precision = devices.memory_format, devices.effective_precision
session = default_session(sys.argv[1], torch.device("cpu"))  # its TrainSession reads the patched names
# the patches above reach into the session's imports: a variant that did not take is an error
assert (session.memory_format == torch.contiguous_format) == (variant.get("layout") == "contiguous"), variant
assert (session.precision == "bf16") == (variant.get("bf16") == "forced" or devices.native_bf16(torch.device("cpu")))
sec = timed(session.train_step, int(sys.argv[3]), 5, torch.device("cpu"))
print(json.dumps({"steps_per_s": 1 / sec, "threads": torch.get_num_threads(),
                  "ran_as": getattr(session, "precision", "?"), "layout": str(session.memory_format)}))
"""

VARIANTS = {
    "as the code picks": {},
    "contiguous (NCHW)": {"layout": "contiguous"},
    "bf16 autocast forced": {"bf16": "forced"},
    "bf16 forced, contiguous": {"bf16": "forced", "layout": "contiguous"},
}


def _measure(variant: dict, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CODE, str(ROOT / "params.yaml"), json.dumps(variant), str(steps),
                          str(ROOT / "benchmarks")], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from nirgan.cores import available_cores
    from nirgan.devices import native_bf16

    threads = available_cores()
    print(f"native bf16 here: {native_bf16(torch.device('cpu'))}; {threads} threads", flush=True)
    rows = []
    for name, variant in VARIANTS.items():
        row = {"variant": name, **_measure(variant, args.steps, threads)}
        rows.append(row)
        print(f"{name:>26}: {row['steps_per_s']:.2f} steps/s (ran as {row['ran_as']}, {row['layout']})", flush=True)
    for row in rows[1:]:
        row["vs_picked"] = row["steps_per_s"] / rows[0]["steps_per_s"]
        print(f"{row['variant']} / as picked = {row['vs_picked']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
