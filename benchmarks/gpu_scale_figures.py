"""What the device check reports about training speed: pairs/s, achieved TFLOP/s and the fraction
of the card's peak, and the eval.json keys it copies into summary.json as the figures."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

# Dense bf16 tensor-core peak per card, TFLOP/s, from NVIDIA's data sheets (the sparse figure
# halved). A card not named here gets its fraction of peak reported unavailable; so do the NVL
# variants, whose peak differs from their SXM namesakes'.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIE", 756.0),
    ("H100 80GB HBM3", 989.0),  # how torch names the SXM card
    ("H100 SXM", 989.0),
    ("A100", 312.0),
)


def peak_bf16_tflops(device_name: str) -> tuple[float | None, str]:
    """(peak TFLOP/s of one card, where it came from) or (None, why not)."""
    upper = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in upper and "NVL" not in upper:
            return peak, f"NVIDIA data sheet, dense bf16, matched {key!r} in {device_name!r}"
    return None, f"no dense bf16 peak is known for {device_name!r} (known: {', '.join(k for k, _ in PEAK_BF16_TFLOPS)})"


FIGURE_PREFIXES = ("pose_gen_head_mean", "pose_gen_gaze_mean", "pose_rec_head_mean", "pose_rec_gaze_mean",
                   "pose_real_head_mean", "pose_real_gaze_mean", "latent_code_rms", "realism_", "diversity_",
                   "identity_", "utility_", "judge_", "fid", "lpips")


def loss_log_rates(root: Path, batch: int) -> tuple[float | None, float | None]:
    """(steady pairs/s, seconds of the first log window) from the loss log: the steady rate is the
    median of the later half of the windows after the first; the first window holds the cold
    compile and cudnn's autotuning, so its seconds bound the compile time from above."""
    path = root / "metrics/train_losses.csv"
    if not path.exists():
        return None, None
    with path.open() as f:
        rows = [(int(r["step"]), float(r["pairs_per_s"])) for r in csv.DictReader(f) if r.get("pairs_per_s")]
    if not rows:
        return None, None
    later = [rate for _, rate in rows[1:]] or [rows[0][1]]
    step, rate = rows[0]
    return statistics.median(later[len(later) // 2:]), round(step * batch / rate, 1) if rate > 0 else None


def train_figures(s: dict, root: Path, train_params: dict, result: dict, smoke: bool) -> None:
    """summary["train"]: pairs/s (the whole wall, and steady), TFLOP/s and the fraction of the cards' peak."""
    hw = s.get("hardware", {})
    cards = max(1, result.get("world_size", 1))
    steady, first_window_s = loss_log_rates(root, train_params["batch_size"])
    train = {"steps": result.get("steps"), "epochs": result.get("epochs"), "wall_s": result.get("wall_s"),
             "cards": cards, "pairs_per_s": result.get("pairs_per_s"), "pairs_per_s_steady": steady,
             "first_log_window_s": first_window_s,  # compile + autotune + the window's own steps
             "compile": train_params.get("compile", "none"), "batch": train_params["batch_size"],
             "max_minutes": round(train_params["max_minutes"], 3)}
    gflop = s.get("flops", {}).get("gflop_per_pair")
    if gflop and steady:
        train["gflop_per_pair"] = round(gflop, 3)
        train["tflops"] = float(f"{steady * gflop / 1e3:.3g}")  # 3 significant digits: a CPU smoke reads ~1e-4
        peak, where = (None, "smoke mode runs on the CPU") if smoke else peak_bf16_tflops(hw.get("device", ""))
        train["peak_bf16_tflops_per_card"] = peak
        train["peak_fraction"] = round(train["tflops"] / (peak * cards), 4) if peak else "unavailable"
        train["peak_source" if peak else "peak_fraction_reason"] = where
    else:
        train["tflops"] = "unavailable"
        train["tflops_reason"] = "the flops phase or the loss log did not finish"
    s["train"] = train
    print(f"gpu_scale: train {steady or 0:.0f} pairs/s steady, {train['tflops']} TFLOP/s, "
          f"{train.get('peak_fraction', 'unavailable')} of peak", flush=True)


