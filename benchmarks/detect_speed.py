"""Face detection speed: plain facenet-pytorch MTCNN against nirgan's detect stage, in one run.

All methods see the same 256x256 NIR twin frames (rendered once with ``nirgan.twin``,
the grey frame replicated to RGB for facenet, which wants RGB; that conversion is not
timed):

  plain/image    ``MTCNN(...).detect(frame)`` one frame at a time (facenet's defaults,
                 min_face_size 20: what issue 2's 70-75 frames/s baseline measured)
  plain/batch    ``MTCNN(...).detect(stack)``, facenet's own batched path
  ours/core      ``nirgan.detection.mtcnn.FastMTCNN`` on uint8 frame batches (decoded frames
                 in memory, host->device copy included)
  ours/stage     the whole stage, ``detect.run``: PNG decoding, detection, cropping, PNG
                 encoding of both crops, Parquet (a raw dir made by ``collect.run``)

Rounds are interleaved (each round times every method once) so that a load change on a
shared machine hits all methods alike; the table reports the best and the median round and
the ratios against plain/image. One warm-up call per method is not timed. The detection
rate column is the share of frames with a face at or above ``detect.min_probability``.

Run (CPU)::

    .venv/bin/python benchmarks/detect_speed.py                 # 256 frames, 3 rounds

On a GPU machine (the stage uses CUDA when ``--device cuda`` or ``auto`` finds it)::

    .venv/bin/python benchmarks/detect_speed.py --device cuda --frames 2048 --batch-size 256 \\
        --plain-batch-size 256 --rounds 5

``--skip-plain-image`` leaves out the slowest method on large frame counts.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from nirgan import io
from nirgan.config import Config, parse_config
from nirgan.detection.mtcnn import FastMTCNN
from nirgan.stages import collect, detect


def _twin_config(frames: int, seed: int) -> Config:
    recordings = max(1, round(frames / 32))
    per = -(-frames // recordings)
    return parse_config(
        {
            "collect": {
                "source": "twin",
                "twin": {"seed": seed, "subjects": max(2, recordings), "cameras": 1, "frames": per,
                         "width": 256, "height": 256},
            }
        }
    )


def _rate(best_probs: list[float], threshold: float) -> float:
    return float(np.mean(np.asarray(best_probs) >= threshold))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="ours (default: detect.batch_size)")
    ap.add_argument("--plain-batch-size", type=int, default=64)
    ap.add_argument("--min-face-size", type=int, default=None, help="ours (default: detect.min_face_size)")
    ap.add_argument("--plain-min-face-size", type=int, default=20, help="facenet's default is 20")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--skip-plain-image", action="store_true")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from facenet_pytorch import MTCNN

    if args.threads:
        torch.set_num_threads(args.threads)
    device = detect.resolve_device(args.device)
    base = _twin_config(args.frames, args.seed)
    detect_cfg = {"device": device.type}
    if args.batch_size:
        detect_cfg["batch_size"] = args.batch_size
    if args.min_face_size:
        detect_cfg["min_face_size"] = args.min_face_size
    cfg = parse_config({**base.model_dump(mode="json"), "detect": {**base.detect.model_dump(), **detect_cfg}})
    dcfg = cfg.detect
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, frames {args.frames}, rounds {args.rounds}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        raw, crops = Path(tmp) / "raw", Path(tmp) / "crops"
        t0 = time.perf_counter()
        collect.run(cfg, raw)
        manifest = io.read_table(raw / "manifest.parquet").iloc[: args.frames]
        grey = np.stack([io.read_image(raw / p, 1) for p in manifest.target_path])
        io.write_table(manifest, raw / "manifest.parquet")
        rgb = [cv2.cvtColor(g, cv2.COLOR_GRAY2RGB) for g in grey]
        n = len(grey)
        took = time.perf_counter() - t0
        print(f"rendered {n} twin frames {grey.shape[2]}x{grey.shape[1]} in {took:.1f} s", flush=True)

        plain = MTCNN(min_face_size=args.plain_min_face_size, select_largest=False, device=device)
        fast = FastMTCNN(device, min_face_size=dcfg.min_face_size)
        frames_cpu = torch.from_numpy(grey)
        if device.type == "cuda":
            frames_cpu = frames_cpu.pin_memory()
        probs: dict[str, list[float]] = {}

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def plain_image() -> None:
            out = []
            for img in rgb:
                _, p = plain.detect(img)
                out.append(0.0 if p[0] is None else float(max(p)))
            probs["plain/image"] = out
            sync()

        def plain_batch() -> None:
            out = []
            for i in range(0, n, args.plain_batch_size):
                _, ps = plain.detect(np.stack(rgb[i : i + args.plain_batch_size]))
                out += [0.0 if p[0] is None else float(max(p)) for p in ps]
            probs["plain/batch"] = out
            sync()

        def ours_core() -> None:
            out = []
            for i in range(0, n, dcfg.batch_size):
                batch = frames_cpu[i : i + dcfg.batch_size]
                faces = fast(batch)
                best = np.zeros(len(batch))
                np.maximum.at(best, faces.frame, faces.probability)
                out += best.tolist()
            probs["ours/core"] = out

        def ours_stage() -> None:
            counts = detect.run(cfg, raw, crops)
            probs["ours/stage"] = [1.0] * counts["kept"] + [0.0] * (n - counts["kept"])

        methods: dict[str, Callable[[], None]] = {}
        if not args.skip_plain_image:
            methods["plain/image"] = plain_image
        methods["plain/batch"] = plain_batch
        methods["ours/core"] = ours_core
        if not args.skip_stage:
            methods["ours/stage"] = ours_stage

        logging.getLogger("nirgan").setLevel(logging.ERROR)  # one stage log line per call is noise here
        for fn in methods.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.rounds):
            for name, fn in methods.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            line = "  ".join(f"{k} {n / v[-1]:7.1f}" for k, v in times.items())
            print(f"round {r + 1}: frames/s  {line}", flush=True)

    ref = "plain/image" if "plain/image" in times else "plain/batch"
    best = {k: n / min(v) for k, v in times.items()}
    median = {k: n / statistics.median(v) for k, v in times.items()}
    round_ratio = {k: statistics.median(times[ref][i] / v[i] for i in range(len(v))) for k, v in times.items()}
    print()
    print(f"{'method':<12} {'best f/s':>9} {'median f/s':>11} {'x ' + ref + ' (best)':>22} "
          f"{'x (median of rounds)':>21} {'detected':>9}")
    for k in times:
        print(f"{k:<12} {best[k]:9.1f} {median[k]:11.1f} {best[k] / best[ref]:22.2f} {round_ratio[k]:21.2f} "
              f"{_rate(probs[k], dcfg.min_probability):9.3f}")
    print(f"\nplain: facenet MTCNN min_face_size={args.plain_min_face_size}, batch {args.plain_batch_size}; "
          f"ours: min_face_size={dcfg.min_face_size}, batch {dcfg.batch_size}, crop {dcfg.crop_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
