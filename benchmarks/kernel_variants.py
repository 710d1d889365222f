"""Which CPU kernels the data stages' bytes depend on: augment rerun under other kernel choices.

A data folder hashes the same on two machines only if no library picks a kernel by CPU on the way.
This reruns the augment stage on this checkout's `data/crops` and `data/clean` (after `dvc repro`
or `dvc pull`) in child processes, once as the machine chooses and once under each variant
below, and prints each output file's md5 and whether it equals the committed one (`dvc.lock`'s
`data/prepared`, when its listing is in the DVC cache). On another CPU, run it and compare the
first column with the committed one: the variants say which library a difference comes from.

    .venv/bin/python benchmarks/kernel_variants.py [--variant NAME=VALUE ...]

Found this way (2026-12-05, Intel Xeon with AMX): before `nirgan.augmentation.sampling_grid`,
every MKL variant changed `preview.png` (``F.affine_grid``'s batched product); after it, none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    "MKL_CBWR=COMPATIBLE", "MKL_CBWR=AVX2", "MKL_CBWR=SSE4_2",  # MKL's BLAS kernels
    "ATEN_CPU_CAPABILITY=avx2",  # torch's own vector kernels
    "NPY_DISABLE_CPU_FEATURES=AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR",  # numpy's
    "OPENCV_CPU_DISABLE=AVX512_SKX,AVX512_COMMON",  # OpenCV's dispatch
    "DNNL_MAX_CPU_ISA=AVX2",  # oneDNN's
]
CHILD = """
import hashlib, json, sys, tempfile
from pathlib import Path
from nirgan.config import load_config
from nirgan.stages import augment
out = Path(tempfile.mkdtemp()) / "prepared"
augment.run(load_config(Path("params.yaml")), crops_dir=Path("data/crops"), clean_dir=Path("data/clean"), out_dir=out)
print(json.dumps({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}))
"""


def committed() -> dict[str, str]:
    """The committed `data/prepared` files' md5s, from the DVC cache's listing of the lock's hash."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["augment"]["outs"] if o["path"] == "data/prepared")
    listing = ROOT / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    return {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())} if listing.exists() else {}


def run(variant: str | None) -> dict[str, str] | str:
    """The output files' md5s, or why the child failed (a variant this machine's libraries refuse)."""
    env = dict(os.environ)
    if variant:
        name, _, value = variant.partition("=")
        env[name] = value
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="NAME=VALUE (repeatable); default: the list above")
    args = parser.parse_args()
    reference, base = committed(), run(None)
    if isinstance(base, str):
        raise SystemExit(f"augment failed: {base}")
    print("file".ljust(18), "this machine".ljust(34), "committed")
    for name, md5 in base.items():
        print(name.ljust(18), md5.ljust(34), "same" if reference.get(name) == md5 else
              ("differs" if reference else "not in the DVC cache"))
    for variant in args.variant or VARIANTS:
        found = run(variant)
        if isinstance(found, str):
            print(f"{variant}: not run ({found})")
            continue
        changed = [n for n in base if found.get(n) != base[n]]
        print(f"{variant}: {'changes ' + ', '.join(changed) if changed else 'the same bytes'}")


if __name__ == "__main__":
    main()
