"""FastMTCNN: facenet-pytorch's MTCNN (its bundled P-, R- and O-Net weights, the
cascade and thresholds of ``facenet_pytorch.models.utils.detect_face``) re-driven for
throughput by :class:`FastMTCNN`:

- a whole batch of same-size frames goes through PNet as one tensor per pyramid scale,
  and the candidates of every scale and frame are gathered with one mask, not one per
  scale;
- the RNet and ONet inputs of all candidates of the batch are cut and resized in one
  vectorised step, four gathers from per-frame summed-area tables, which reproduces
  facenet's per-box ``interpolate(mode="area")`` loop exactly (same bins, same averages);
- NIR frames are grey, so the three identical input channels and facenet's
  ``(x - 127.5) / 128`` scaling are folded into each network's first convolution (exact:
  the first convolutions have no padding), which saves the RGB copy and two thirds of
  the first layer;
- ``min_face_size`` (``cfg.detect.min_face_size``) prunes the fine pyramid scales that
  cannot hold a face the size the rig renders;
- on a CPU the networks run channels-last, where oneDNN's small convolutions and
  poolings are several times faster than in NCHW;
- the whole cascade computes in float64 and the results are stored as float32: in float32
  the boxes, landmarks and probabilities depend on the thread count and the CPU's vector
  kernels (other summation orders), so the output bytes, and DVC's hash of them, differed
  between machines and a fresh clone reran detect and every stage after it (issue 12).
  float64 rounding noise is ~1e-16, far below float32's step, so the stored values agree
  (tests/test_detect_repro.py); it costs about 3x the CPU time of float32;
- the final "Min"-overlap NMS runs on the host once per batch, vectorised over frames.
  On a GPU the handful of synchronisations per batch come from the data-dependent
  candidate counts of the cascade steps, never from a loop over boxes or frames; frames
  travel as pinned uint8 with ``non_blocking`` copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import nms

# facenet-pytorch's MTCNN defaults (thresholds per cascade step, pyramid factor).
THRESHOLDS: tuple[float, float, float] = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709


# ------------------------------------------------------------------------------ detector
def _fold_grey_input(conv: nn.Conv2d) -> nn.Conv2d:
    """facenet's first conv on (grey replicated to RGB - 127.5) / 128, as one conv on grey 0..255.

    Exact because the first convolutions of P/R/O-Net have no padding, so every output
    sees only real pixels and the constant shift folds into the bias.
    """
    scale = 0.0078125
    w = conv.weight.detach().sum(dim=1, keepdim=True) * scale
    b = conv.bias.detach() - 127.5 * w.sum(dim=(1, 2, 3))
    folded = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, bias=True)
    with torch.no_grad():
        folded.weight.copy_(w)
        folded.bias.copy_(b)
    return folded


def _grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """IoU NMS within each group, in one ``nms`` call (groups moved apart, on the device)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    shifted = boxes - boxes.min()
    offsets = groups.to(boxes.dtype) * (shifted.max() + 1)
    return nms(shifted + offsets[:, None], scores, iou)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """facenet's ``rerec``: the square with the longer side around each box's centre."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """facenet's ``bbreg`` (its +1 box sides included)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _roi(boxes: torch.Tensor, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """facenet's ``pad``: integer 1-based boxes clipped to the frame, as pixel-edge regions.

    Returns the regions (x0, y0, x1, y1: rows y0..y1-1, columns x0..x1-1, int64) and which
    of them are non-empty.
    """
    b = boxes.trunc().long()
    x = b[:, 0].clamp(min=1)
    y = b[:, 1].clamp(min=1)
    ex = b[:, 2].clamp(max=w)
    ey = b[:, 3].clamp(max=h)
    valid = (ey > y - 1) & (ex > x - 1)
    return torch.stack([x - 1, y - 1, ex, ey], dim=1), valid


def _integral(frames: torch.Tensor) -> torch.Tensor:
    """Summed-area tables (N, H+1, W+1), int32: exact for 8-bit frames up to 8 Mpx."""
    if frames.device.type == "cpu":
        # OpenCV's integral is several times faster than two torch cumsums on a CPU.
        return torch.from_numpy(np.stack([cv2.integral(f) for f in frames.numpy()]))
    return _integral_torch(frames)


def _integral_torch(frames: torch.Tensor) -> torch.Tensor:
    table = frames.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return F.pad(table, (1, 0, 1, 0))


def _area_patches(integral: torch.Tensor, frame: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Every region resized to size x size exactly as ``interpolate(mode="area")`` does it
    (adaptive average pooling: bin i spans floor(i*n/size) .. ceil((i+1)*n/size)), for all
    regions of the batch at once by four gathers from the summed-area tables.

    Returns (K, 1, size, size) float64 in 0..255.
    """
    _, hp, wp = integral.shape
    flat = integral.view(-1)
    i = torch.arange(size, device=regions.device)
    x0, y0, x1, y1 = regions.unbind(1)
    bw, bh = (x1 - x0)[:, None], (y1 - y0)[:, None]
    base = (frame * (hp * wp))[:, None, None]
    ys = (y0[:, None] + i * bh // size) * wp
    ye = (y0[:, None] + ((i + 1) * bh + size - 1) // size) * wp
    xs = x0[:, None] + i * bw // size
    xe = x0[:, None] + ((i + 1) * bw + size - 1) // size

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat.take(base + y[:, :, None] + x[:, None, :])

    total = at(ye, xe) - at(ys, xe) - at(ye, xs) + at(ys, xs)
    area = ((ye - ys) // wp)[:, :, None] * (xe - xs)[:, None, :]
    return (total.double() / area.double()).unsqueeze(1)


@dataclass
class Faces:
    """All final detections of one batch, on the host, sorted by frame then probability."""

    frame: np.ndarray  # (K,) int, index of the frame in the batch
    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1 (facenet's box, raw frame pixels)
    probability: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 5, 2) float32, raw frame pixels, order of LANDMARKS


class FastMTCNN:
    """facenet-pytorch's MTCNN cascade, batched over frames and candidates (see module doc)."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = THRESHOLDS,
        factor: float = PYRAMID_FACTOR,
    ) -> None:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.factor = factor
        # oneDNN runs these small convolutions and poolings much faster channels-last on a CPU.
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        nets = []
        for net in (PNet(), RNet(), ONet()):
            net.conv1 = _fold_grey_input(net.conv1)
            net = net.eval().requires_grad_(False).to(self.device, torch.float64, memory_format=self.memory_format)
            nets.append(net)
        self.pnet, self.rnet, self.onet = nets
        self._grid_cache: dict[tuple[int, int], tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]] = {}

    def _pyramid(self, h: int, w: int) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
        """Per frame size: the scaled sizes, and for every PNet output cell its 12x12 window
        in frame pixels and its scale index (facenet's ``generateBoundingBox``)."""
        key = (h, w)
        if key not in self._grid_cache:
            m = 12.0 / self.min_face_size
            minl = min(h, w) * m
            scale, sizes, windows, scale_ids = m, [], [], []
            while minl >= 12:
                sh, sw = int(h * scale + 1), int(w * scale + 1)
                # PNet: 3x3 conv, 2x2 ceil pool, 3x3 conv, 3x3 conv.
                oh, ow = math.ceil((sh - 2) / 2) - 4, math.ceil((sw - 2) / 2) - 4
                yy, xx = torch.meshgrid(torch.arange(oh), torch.arange(ow), indexing="ij")
                cell = torch.stack([xx.flatten(), yy.flatten()], dim=1).float()
                q1 = ((2 * cell + 1) / scale).floor()
                q2 = ((2 * cell + 12) / scale).floor()
                sizes.append((sh, sw))
                windows.append(torch.cat([q1, q2], dim=1))
                scale_ids.append(torch.full((oh * ow,), len(sizes) - 1))
                scale *= self.factor
                minl *= self.factor
            self._grid_cache[key] = (
                sizes,
                # float32 arithmetic as facenet's, held in float64 like the rest of the cascade
                torch.cat(windows).to(self.device, torch.float64) if windows else torch.empty(
                    0, 4, device=self.device, dtype=torch.float64
                ),
                torch.cat(scale_ids).to(self.device) if scale_ids else torch.empty(0, device=self.device),
            )
        return self._grid_cache[key]

    @torch.inference_mode()
    def detect(self, frames: torch.Tensor) -> Faces:
        """Detect faces on a batch of grey frames, uint8 (N, H, W) on any device."""
        n, h, w = frames.shape
        if frames.device != self.device:
            frames = frames.pin_memory() if self.device.type == "cuda" else frames
            frames = frames.to(self.device, non_blocking=True)
        imgs = frames.unsqueeze(1).double()  # float64: see the module doc (reproducible bytes)
        sizes, windows, scale_ids = self._pyramid(h, w)
        t_p, t_r, t_o = self.thresholds
        if not sizes:  # frames smaller than min_face_size hold no face
            return _min_nms(np.empty((0, 16), dtype=np.float32), 0.7)

        # Stage 1: PNet over every pyramid scale, candidates of all scales gathered at once.
        scores, regs = [], []
        for size in sizes:
            scaled = F.interpolate(imgs, size=size, mode="area").contiguous(memory_format=self.memory_format)
            reg, prob = self.pnet(scaled)
            scores.append(prob[:, 1].flatten(1))
            regs.append(reg.flatten(2))
        score = torch.cat(scores, dim=1)
        reg = torch.cat(regs, dim=2).transpose(1, 2)
        img_i, cell_i = (score >= t_p).nonzero(as_tuple=True)
        boxes = windows[cell_i]
        cand_score = score[img_i, cell_i]
        cand_reg = reg[img_i, cell_i]
        # facenet: NMS 0.5 per frame and scale, then 0.7 per frame.
        keep = _grouped_nms(boxes, cand_score, img_i * len(sizes) + scale_ids[cell_i], 0.5)
        boxes, cand_score, cand_reg, img_i = boxes[keep], cand_score[keep], cand_reg[keep], img_i[keep]
        keep = _grouped_nms(boxes, cand_score, img_i, 0.7)
        boxes, cand_reg, img_i = boxes[keep], cand_reg[keep], img_i[keep]
        side = boxes[:, 2:] - boxes[:, :2]
        boxes = _square(boxes + cand_reg * torch.cat([side, side], dim=1))

        # Stage 2: RNet on all candidates of the batch. (Candidate counts are known on the
        # host already: boolean indexing synchronises, so these emptiness checks cost nothing.)
        integral = _integral(frames)
        rois, valid = _roi(boxes, w, h)
        boxes, rois, img_i = boxes[valid], rois[valid], img_i[valid]
        if len(boxes) == 0:
            return _min_nms(np.empty((0, 16), dtype=np.float32), 0.7)
        patches = _area_patches(integral, img_i, rois, 24)
        reg, prob = self.rnet(patches.contiguous(memory_format=self.memory_format))
        passed = prob[:, 1] > t_r
        boxes, cand_score, reg, img_i = boxes[passed], prob[passed, 1], reg[passed], img_i[passed]
        keep = _grouped_nms(boxes, cand_score, img_i, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        img_i = img_i[keep]

        # Stage 3: ONet, landmarks.
        rois, valid = _roi(boxes, w, h)
        boxes, rois, img_i = boxes[valid], rois[valid], img_i[valid]
        if len(boxes) == 0:
            return _min_nms(np.empty((0, 16), dtype=np.float32), 0.7)
        patches = _area_patches(integral, img_i, rois, 48)
        reg, points, prob = self.onet(patches.contiguous(memory_format=self.memory_format))
        passed = prob[:, 1] > t_o
        boxes, reg, points, img_i = boxes[passed], reg[passed], points[passed], img_i[passed]
        cand_score = prob[passed, 1]
        wh = boxes[:, 2:] - boxes[:, :2] + 1
        points_x = wh[:, :1] * points[:, :5] + boxes[:, :1] - 1
        points_y = wh[:, 1:] * points[:, 5:] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg)

        # One transfer per batch; the last NMS runs on the host.
        packed = torch.cat([img_i[:, None].to(boxes.dtype), boxes, cand_score[:, None], points_x, points_y], 1)
        packed = packed.cpu().numpy()
        return _min_nms(packed, 0.7)

    def __call__(self, frames: torch.Tensor) -> Faces:
        return self.detect(frames)


def _min_nms(packed: np.ndarray, threshold: float) -> Faces:
    """facenet's final NMS ("Min" overlap, +1 box sides) per frame, greedy by probability.

    A box survives when no surviving higher-ranked box of its frame overlaps it by more than
    ``threshold`` of the smaller area; ranks are processed in order, all frames at once.
    """
    frame = packed[:, 0].astype(np.int64)
    order = np.lexsort((-packed[:, 5], frame))
    packed, frame = packed[order], frame[order]
    k = len(packed)
    if k:
        starts = np.r_[0, np.flatnonzero(np.diff(frame)) + 1]
        counts = np.diff(np.r_[starts, k])
        rank = np.arange(k) - np.repeat(starts, counts)
        # Every ordered pair of boxes on the same frame (sum of count^2, small).
        per_box = np.repeat(counts, counts)
        pi = np.repeat(np.arange(k), per_box)
        first = np.repeat(np.repeat(starts, counts), per_box)
        pj = first + np.arange(len(pi)) - np.repeat(np.cumsum(per_box) - per_box, per_box)
        b = packed[:, 1:5]
        area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
        iw = np.minimum(b[pi, 2], b[pj, 2]) - np.maximum(b[pi, 0], b[pj, 0]) + 1
        ih = np.minimum(b[pi, 3], b[pj, 3]) - np.maximum(b[pi, 1], b[pj, 1]) + 1
        overlap = np.clip(iw, 0, None) * np.clip(ih, 0, None) / np.minimum(area[pi], area[pj])
        above = (overlap > threshold) & (rank[pj] < rank[pi])
        pi, pj = pi[above], pj[above]
        keep = np.zeros(k, dtype=bool)
        for r in range(int(rank.max()) + 1):
            keep[rank == r] = True
            hit = (rank[pi] == r) & keep[pj]
            keep[pi[hit]] = False
        packed, frame = packed[keep], frame[keep]
    landmarks = np.stack([packed[:, 6:11], packed[:, 11:16]], axis=2)
    return Faces(
        frame=frame,
        boxes=packed[:, 1:5].astype(np.float32),
        probability=packed[:, 5].astype(np.float32),
        landmarks=landmarks.astype(np.float32),
    )
