"""Head-pose and gaze estimator on 1-channel NIR faces (thesis 5.2, "future work").

The thesis judged attribute preservation by eye (Figures 4.12-4.15) and proposed a pose/gaze
network as future work; no thesis table defines one. Two parts:

**Face trunk** (head pose; its features are the realism feature space), a small plain CNN:

    input (B, 1, S, S) in [-1, 1], area-resized to ``image_size`` (divisible by 32; 64 by default)
    5 x [Conv 3x3 stride 2 (first: 5x5), BatchNorm, ReLU]   1 -> w -> 2w -> 4w -> 4w -> 8w, S/32
    flatten (spatial layout kept: where the face is IS the signal) -> Linear -> ReLU
    -> ``features`` (feature_dim) -> Linear -> 5 angles [head_yaw, head_pitch, head_roll, gaze_yaw,
    gaze_pitch]; -> Linear -> both eye-opening centres (with eye patches); -> Linear -> subject
    logits (auxiliary, training only)

The optional subject head (``subject_weight``) pushes ``features`` towards identity; evaluate
trains without it (see ``SUBJECT_WEIGHT`` in the evaluate stage) and uses ``features`` as the
in-pipeline feature space for FID/KID (``realism_fid_nirfeat``).

**Eye patches** (gaze). On the twin a 20 degree gaze moves the iris ~3 pixels in a 128 crop and
under 2 in a 64 one; the trunk alone scored 6.6 degrees mean gaze error against a label spread
of ~9, i.e. it barely saw the eyes. So the trunk also regresses both eye openings' centres, a
(20 x 28)-pixel patch of the full-size image is read around each (``extract_patches``; the
right eye mirrored so that one ``EyePatchNet`` reads both), the patch net finds the iris and
the opening centre in it, and a small MLP turns the iris-in-opening offsets, the openings'
positions and the trunk's angles (where the head points changes how an eye rotation looks)
into gaze. The keypoints are supervised by the colour code of the source renders (thesis
Fig. 3.3: eye whites green, irises blue; :func:`eye_keypoints`), which every training pair of
a rig carries, so no extra labels are needed; sources without that code give an estimator
without the eye patches (gaze from the trunk). Training places the patches at the true opening
centres with a small jitter, inference at the trunk's. Checked on the default twin: the
sources' exact centroids, quadratic-regressed to gaze, give 1.4 degrees mean error; this
estimator reaches 1.8 (iris-in-opening offsets within 0.3 px), for +11 s of CPU training.

Angles are predicted in units of the training labels' standard deviation (buffers
``label_mean`` / ``label_std``) so all five outputs weigh alike in the loss.

:func:`nirgan.training.auxiliary.train_pose_estimator` trains it on real targets with horizontal
flips (the draws of :func:`nirgan.augmentation.paired_augment`, which mirror the labels with
``FLIP_SIGN``; the keypoints, found once in the un-augmented sources, move with the same draws)
plus small scale/shift and gamma draws; rotation is
left out because the thesis's augmentation keeps the roll label unchanged under rotation, which
would teach the estimator wrong rolls. The trainer may reuse a saved estimator (frozen) for the
attribute-preservation loss: ``forward`` is differentiable with respect to its input.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nirgan.labels import LABELS

EYE_KEYPOINTS = ("left_iris", "left_opening", "right_iris", "right_opening")  # image-left eye first
GAZE = slice(3, 5)  # gaze_yaw, gaze_pitch in LABELS
PATCH = (20, 28)  # rows, cols of an eye patch in pixels of a 128 crop: an opening (~16 px) with its lids
CENTRE = 63.5  # of a 128 crop, pixel i centred at i: eye coordinates are kept in that frame at any size


# ------------------------------------------------------------------ keypoints from the renders
def eye_keypoints(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye keypoints of colour-coded renders (B, 3, H, W) in [-1, 1] (as augmentation returns
    them): (B, 4, 2) pixel (x, y) in ``EYE_KEYPOINTS`` order, and (B, 4) validity.

    Iris = blue above red and green by half the range; opening = iris or green above red and
    blue (resampling blends the codes at edges; yellow glasses and red skin count as neither).
    The eyes are split at the opening pixels' mean x. An eye needs 1 iris / 2 opening pixels."""
    r, g, b = ((source.float() + 1) / 2).unbind(1)
    iris = ((b - torch.maximum(r, g)) > 0.5).float()
    opening = torch.maximum(iris, ((g - torch.maximum(r, b)) > 0.5).float())
    h, w = r.shape[-2:]
    ys = torch.arange(h, device=source.device, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, device=source.device, dtype=torch.float32)[None, :].expand(h, w)
    divider = (opening * xs).sum((1, 2)) / opening.sum((1, 2)).clamp_min(1.0)
    left = (xs[None] < divider[:, None, None]).float()
    points, valid = [], []
    for side in (left, 1 - left):
        for weight, least in ((iris * side, 1.0), (opening * side, 2.0)):
            m = weight.sum((1, 2))
            points.append(torch.stack([(weight * xs).sum((1, 2)), (weight * ys).sum((1, 2))], -1)
                          / m.clamp_min(1.0)[:, None])
            valid.append(m >= least)
    return torch.stack(points, 1), torch.stack(valid, 1)


def has_eye_code(sources: torch.Tensor) -> bool:
    """Whether uint8 (N, S, S, 3) sources carry the eye colour code at all."""
    return bool(((sources[..., 1:].amax(-1).int() - sources[..., 0].int()) > 128).any())


# ---------------------------------------------------------------------------- eye patches
def extract_patches(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) images and (B, 2, 2) opening centres in pixels of x -> (2B, 1, *PATCH) patches
    covering the same face area at any S (a patch pixel is S/128 pixels of x): all left eyes, then
    all right eyes mirrored (so one network reads both)."""
    b, size = x.shape[0], x.shape[-1]
    rows, cols = PATCH
    step = size / 128
    ys = (torch.arange(rows, device=x.device, dtype=x.dtype) - (rows - 1) / 2) * step
    xs = (torch.arange(cols, device=x.device, dtype=x.dtype) - (cols - 1) / 2) * step
    grids = []
    for eye, mirror in ((0, 1.0), (1, -1.0)):
        cx = (centres[:, eye, 0, None, None] + mirror * xs[None, None, :]).expand(b, rows, cols)
        cy = (centres[:, eye, 1, None, None] + ys[None, :, None]).expand(b, rows, cols)
        # pixel centre i sits at normalised (2i + 1) / S - 1 (align_corners=False)
        grids.append(torch.stack([(2 * cx + 1) / size - 1, (2 * cy + 1) / size - 1], -1))
    return F.grid_sample(x.repeat(2, 1, 1, 1), torch.cat(grids), mode="bilinear", padding_mode="border",
                         align_corners=False)


class EyePatchNet(nn.Module):
    """One eye patch (1, *PATCH) -> its iris and opening centres, (2, 2) (x, y) in patch pixels
    from the patch centre."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(a: int, b: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, stride, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]

        self.net = nn.Sequential(*block(1, width), *block(width, 2 * width, 2), *block(2 * width, 2 * width),
                                 *block(2 * width, 4 * width, 2))
        cells = -(-PATCH[0] // 4) * -(-PATCH[1] // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * cells, 64), nn.ReLU(True), nn.Linear(64, 4))
        self.layout = torch.channels_last  # see PoseEstimator.layout

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(patch.contiguous(memory_format=self.layout))).view(-1, 2, 2)


# ---------------------------------------------------------------------------------- the net
class PoseEstimator(nn.Module):
    def __init__(self, image_size: int = 128, width: int = 24, feature_dim: int = 128, n_subjects: int = 0,
                 eyes: bool = False):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"PoseEstimator needs an image size divisible by 32, got {image_size}")
        self.image_size, self.width, self.feature_dim, self.n_subjects = image_size, width, feature_dim, n_subjects
        chans = [1, width, 2 * width, 4 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(a, b, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        self.trunk = nn.Sequential(*layers)
        side = image_size // 32
        self.to_features = nn.Linear(chans[-1] * side * side, feature_dim)
        self.to_angles = nn.Linear(feature_dim, len(LABELS))
        self.to_subject = nn.Linear(feature_dim, max(n_subjects, 1))
        self.register_buffer("label_mean", torch.zeros(len(LABELS)))
        self.register_buffer("label_std", torch.ones(len(LABELS)))
        self.eyes = eyes
        if eyes:
            # both opening centres, in units of 4 pixels of a 128 crop from its centre
            self.to_openings = nn.Linear(feature_dim, 4)
            self.patch_net = EyePatchNet()
            # iris-in-opening offsets (4), openings (4), the trunk's angles (5)
            self.to_gaze = nn.Sequential(nn.Linear(13, 64), nn.ReLU(True), nn.Linear(64, 64), nn.ReLU(True),
                                         nn.Linear(64, 2))
        self.to(memory_format=torch.channels_last)  # conv weights; .to(device) and load_state_dict keep it
        # the inputs' layout; a bank of estimators under torch.func.vmap (which cannot lay out
        # channels_last) sets torch.contiguous_format (nirgan.training.auxiliary.EstimatorBank)
        self.layout = torch.channels_last

    def config(self) -> dict:
        return dict(image_size=self.image_size, width=self.width, feature_dim=self.feature_dim,
                    n_subjects=self.n_subjects, eyes=self.eyes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if size % self.image_size == 0 and size > self.image_size and x.shape[-2] == size:
            # the area resize below, as a plain block mean: same numbers, several times faster on a CPU
            x = F.avg_pool2d(x, size // self.image_size)
        elif size != self.image_size:
            # inputs of any size are area-resized to the working resolution (see ``resolution``)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        # channels_last: the trunk's convolutions (the first has one input channel) run faster so
        # on both CPU (oneDNN) and GPU; the weights are laid out so in __init__
        return F.relu(self.to_features(self.trunk(x.contiguous(memory_format=self.layout)).flatten(1)))

    def outputs(self, x: torch.Tensor, openings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One pass: ``angles`` (normalised; gaze from the eye patches when ``eyes``),
        ``trunk_angles``, ``subject``; with eyes also ``openings`` (the trunk's opening centres)
        and ``keypoints`` (B, 4, 2), both in pixels of a 128 crop. Training passes the true
        ``openings`` (jittered) to place the patches while the trunk is still learning them."""
        f = self.features(x)
        trunk = self.to_angles(f)
        out = dict(trunk_angles=trunk, subject=self.to_subject(f), angles=trunk)
        if self.eyes:
            located = self.to_openings(f).view(-1, 2, 2) * 4 + CENTRE
            centres = (located.detach() if openings is None else openings)
            scale = x.shape[-1] / 128
            read = self.patch_net(extract_patches(x, (centres + 0.5) * scale - 0.5))
            left, right = read[: len(x)], read[len(x):] * read.new_tensor([-1.0, 1.0])  # un-mirror x
            kp = torch.stack([left[:, 0], left[:, 1], right[:, 0], right[:, 1]], 1) + centres.repeat_interleave(2, 1)
            offsets = (kp[:, 0::2] - kp[:, 1::2]).flatten(1)
            gaze = self.to_gaze(torch.cat([offsets, ((kp[:, 1::2] - CENTRE) / 4).flatten(1), trunk.detach()], 1))
            out.update(openings=located, keypoints=kp, angles=torch.cat([trunk[:, : GAZE.start], gaze], 1))
        return out

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.outputs(x)
        return out["angles"], out["subject"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Angles in degrees, (B, 5) in ``LABELS`` order."""
        return self.forward_normalised(x)[0] * self.label_std + self.label_mean


@torch.no_grad()
def predict(model: PoseEstimator, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, 5) degrees for images in [-1, 1], (N, 1, S, S)."""
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def features(model: PoseEstimator, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    device = next(model.parameters()).device
    out = [model.features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()
