"""The augmentation's sampling grid has the same bits on every CPU (issue 22, item 6).

``F.affine_grid`` computes its grid in a batched matrix product, and MKL picks that product's
kernel by CPU: on an Intel Xeon its AVX-512 path and its AVX2 path (``MKL_CBWR=AVX2``) differ in
the last bits, and so does the augment stage's preview in ``data/prepared`` (the likely reason
that folder hashed differently on an AMD Zen 4; not checked there).
``nirgan.augmentation.sampling_grid`` replaces it with float64 steps that every CPU rounds
alike. These tests run the same draws under other MKL and ATen kernel choices in child
processes and compare the bytes, and pin a digest that follows from IEEE arithmetic alone, so
it holds on any x86-64 machine. (Measured here: the grid's digest is
the same under ATen's scalar kernels too, ``ATEN_CPU_CAPABILITY=default``, as on a CPU without
AVX2; the augmented pair's is not there, through ``grid_sample`` or ``pow``, so that case is
not tested.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nirgan.augmentation import apply_params, sampling_grid

# theta written out (no transcendental function, whose last bits could depend on the kernels):
# a flip, a rotation with scale, a shift, and the identity
THETA = torch.tensor([
    [[-0.9394, 0.2131, 0.0625], [0.2131, 0.9394, -0.0410]],
    [[1.0712, -0.1877, -0.1250], [0.1877, 1.0712, 0.0937]],
    [[0.8750, 0.0, 0.2], [0.0, 0.8750, -0.15]],
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
], dtype=torch.float32)
# md5 of sampling_grid(THETA, 128, 128) and (THETA, 64, 100): IEEE float32 and float64 steps only
DIGESTS = {"128x128": "8a8635d45086ea90dd98a0bcf63487d8", "64x100": "2daae5862397c9924e612487661b8b3f"}


def _md5(t: torch.Tensor) -> str:
    return hashlib.md5(t.contiguous().numpy().tobytes()).hexdigest()


def _digests() -> dict[str, str]:
    """The grid, ``affine_grid`` and a whole augmented pair, as this process computes them."""
    torch.manual_seed(0)
    source, target = torch.rand(4, 3, 128, 128), torch.rand(4, 1, 128, 128)
    params = {"flip": torch.tensor([True, False, False, False]), "rotation": torch.tensor([0.2, -0.1, 0.0, 0.0]),
              "scale": torch.tensor([0.95, 1.05, 1.1, 1.0]), "shift_x": torch.tensor([0.03, -0.05, 0.1, 0.0]),
              "shift_y": torch.tensor([-0.02, 0.04, -0.075, 0.0]), "gamma": torch.tensor([100.0, 90.0, 110.0, 100.0])}
    s, t, _ = apply_params(source, target, None, params)
    return {"128x128": _md5(sampling_grid(THETA, 128, 128)), "64x100": _md5(sampling_grid(THETA, 64, 100)),
            "affine_grid": _md5(F.affine_grid(THETA, [4, 1, 128, 128], align_corners=False)),
            "pair": _md5(torch.cat([s, t], 1))}


def test_the_grid_is_affine_grids_to_a_rounding():
    torch.manual_seed(1)
    for height, width in [(128, 128), (64, 100), (100, 64)]:
        a = (torch.rand(16) - 0.5) * 0.6
        s = 0.9 + 0.2 * torch.rand(16)
        tx, ty = (torch.rand(16) - 0.5) * 0.2, (torch.rand(16) - 0.5) * 0.2
        theta = torch.stack([torch.stack([a.cos() / s, a.sin() / s, tx], 1),
                             torch.stack([-a.sin() / s, a.cos() / s, ty], 1)], 1)
        ours = sampling_grid(theta, height, width)
        theirs = F.affine_grid(theta, [16, 1, height, width], align_corners=False)
        assert ours.shape == theirs.shape == (16, height, width, 2)
        # one float32 rounding apart at most (|values| < 2: 2.4e-7), whichever MKL kernel ran
        assert (ours - theirs).abs().max() <= 2.4e-7


def test_the_grid_has_the_digest_ieee_arithmetic_gives():
    found = _digests()
    assert {k: found[k] for k in DIGESTS} == DIGESTS


@pytest.mark.parametrize("env", [{"MKL_CBWR": "COMPATIBLE"}, {"MKL_CBWR": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"}],
                         ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_other_cpu_kernels_give_the_same_grid_and_pair(env):
    code = "import json, test_augment_grid as t; print(json.dumps(t._digests()))"  # `-c` imports from its cwd
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    there, here = json.loads(proc.stdout.strip().splitlines()[-1]), _digests()
    assert {k: there[k] for k in ("128x128", "64x100", "pair")} == {k: here[k] for k in ("128x128", "64x100", "pair")}
    print(env, "affine_grid", "equal" if there["affine_grid"] == here["affine_grid"] else "differs")
