"""The one typed configuration of nirgan, loaded from ``params.yaml``.

``params.yaml`` is grouped by stage; each group is one pydantic model below, and
:class:`Config` holds them all. Every model forbids unknown keys and is frozen, so a
typo or an out-of-range value stops the run before any work, with the dotted key in
the message (see :func:`load_config`).

The class defaults are the thesis's (Table 3.1 for augmentation, Table 3.8 for
training, configuration ED-LS-LR-2). ``params.yaml`` overrides a few of them so that
the default pipeline finishes on a 2-core CPU in minutes; the README lists them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    # strict: a YAML string never becomes a number or a bool ("2.0" for a float is an error);
    # an int still fills a float field, and Path/tuple fields opt out (YAML has no such types).
    # No field means anything by .inf or .nan: an infinite learning rate is a typo found now,
    # not a diverged run after minutes of training.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A params value is wrong; the one-line message names the dotted key and the file."""


class DataError(ValueError):
    """Input data is wrong (a labels table, a data folder); the one-line message names the
    file and, where there is one, the row and the key. The CLI prints it and exits with 2."""


class OutputError(RuntimeError):
    """An output cannot be written (disk full, no permission, read-only): one line naming the path,
    exit code 2. Completed work stays (a rerun continues)."""


class ServiceError(RuntimeError):
    """A service the run needs (the MLflow tracking server) is unreachable: one line, exit code 3."""


# Seeds feed numpy's legacy seeding too, which takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
# An Adam step moves each weight by about the learning rate: above 1 it leaves any weight's scale.
LR_MAX = 1.0


# ----------------------------------------------------------------------------- collect
class TwinConfig(Section):
    """The built-in digital twin (see ``nirgan.twin``)."""

    seed: int = Field(0, ge=0, le=SEED_MAX)
    subjects: int = Field(10, ge=2, description="persistent identities")
    cameras: int = Field(2, ge=1, description="cameras per subject; each has its own gain and noise")
    frames: int = Field(30, ge=4, description="frames per recording (one recording per subject and camera)")
    width: int = Field(256, ge=96, le=2048)
    height: int = Field(256, ge=96, le=2048)
    glasses_fraction: float = Field(0.3, ge=0.0, le=1.0, description="share of subjects who wear glasses")
    disturbance_fraction: float = Field(
        0.08, ge=0.0, le=0.5, description="share of frames with a planted disturbance (ground truth kept)"
    )


EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# FER2013's integer labels, in FER2013's own order (index -> name).
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class ExpressionTwinConfig(Section):
    """The built-in twin rendering expressions (see ``nirgan.expression.twin``)."""

    seed: int = Field(0, ge=0, le=SEED_MAX)
    subjects: int = Field(12, ge=2, description="persistent identities (the NIR twin's subjects of this seed)")
    cameras: int = Field(2, ge=1, description="cameras; each subject is filmed by one, in turn")
    frames_per_expression: int = Field(5, ge=1, description="frames of each expression per subject")
    width: int = Field(128, ge=96, le=2048)
    height: int = Field(128, ge=96, le=2048)
    expressions: tuple[str, ...] = Field(
        EXPRESSIONS, strict=False, min_length=2, description="which of nirgan.expression.twin.PRESETS to render"
    )
    intensity_low: float = Field(0.7, gt=0.0, le=1.5, description="each frame draws its expression's strength")
    intensity_high: float = Field(1.0, gt=0.0, le=1.5)
    glasses_fraction: float = Field(0.3, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _known(self) -> ExpressionTwinConfig:
        unknown = sorted(set(self.expressions) - set(EXPRESSIONS))
        if unknown:
            raise ValueError(f"unknown expression(s) {', '.join(unknown)}; known: {', '.join(EXPRESSIONS)}")
        if len(set(self.expressions)) != len(self.expressions):
            raise ValueError("expressions repeat a name")
        if self.intensity_low > self.intensity_high:
            raise ValueError(f"intensity_low ({self.intensity_low}) is above intensity_high ({self.intensity_high})")
        return self


class CollectConfig(Section):
    source: Literal["twin", "folder", "videos", "expression_twin", "label_folders", "fer2013"] = "twin"
    path: Path | None = Field(
        None, strict=False,
        description="root of a folder or video dataset (thesis layout), of a folder-per-label set, or the FER2013 CSV",
    )
    labels: Path | None = Field(
        None, strict=False,
        description="optional labels table (CSV or Parquet): keyed by pair_id (NIR sources), or with the columns "
        "file (path relative to collect.path) and subject (label_folders)",
    )
    label_map: tuple[str, ...] | None = Field(
        None, strict=False, min_length=2,
        description="fer2013: label names by the CSV's integer emotion (index -> name); None = FER2013's seven",
    )
    video_frame_step: int = Field(1, ge=1, description="keep every n-th video frame")
    max_pixels: int = Field(
        64_000_000,
        ge=1,
        le=170_000_000,
        description="larger images (width x height, read from the header, never decoded) are rejected as "
        "too_large. Collect decodes one pair at a time at full size, at most about 12 bytes per pixel "
        "(16-bit RGB source, its 8-bit copy, the grey target), so 64 Mpx (8000 x 8000) peaks near 0.8 GB; "
        "a 1.5 MB PNG can claim 1.6 Gpx (19 GB). At most 170 Mpx, below Pillow's own bomb guard",
    )
    max_side: int = Field(
        2048,
        ge=96,
        description="longer side of the images collect writes: larger inputs are area-downscaled at read "
        "(JPEG decoded at 1/2, 1/4 or 1/8 by libjpeg), so detect and later stages work on at most "
        "2048 x 2048 (4 Mpx) whatever the camera; MTCNN still sees faces of 40 px or more in such frames",
    )
    bit_depth: int = Field(
        16, ge=9, le=16,
        description="significant bits in 16-bit input images: NIR cameras store 10, 12 or 14-bit samples in "
        "16-bit files, which are scaled by 2^(8 - bit_depth); a 16-bit file above that range is rejected as "
        "above_bit_depth, one whose values all lie below 1/16 of it as low_bit_depth (it would be nearly black)",
    )
    twin: TwinConfig = TwinConfig()
    expression_twin: ExpressionTwinConfig = ExpressionTwinConfig()

    @model_validator(mode="after")
    def _path_for_external_sources(self) -> CollectConfig:
        if self.source not in ("twin", "expression_twin") and self.path is None:
            raise ValueError(f"collect.path is required when collect.source is {self.source!r}")
        if self.source in ("twin", "expression_twin"):
            # A user who sets a path and forgets the source would otherwise train on the twin.
            given = [k for k in ("path", "labels") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"collect.{given[0]} is set but collect.source is {self.source!r}, which reads no "
                                 "files: set collect.source (folder, videos, label_folders, fer2013) or remove "
                                 f"collect.{' and collect.'.join(given)}")
        # Keys the chosen source does not read would be ignored without a word.
        if self.label_map is not None and self.source != "fer2013":
            raise ValueError(f"collect.label_map is set but collect.source is {self.source!r}: only fer2013 reads it "
                             "(it names the CSV's integer emotions); remove collect.label_map")
        if self.labels is not None and self.source == "fer2013":
            raise ValueError("collect.labels is set but collect.source is 'fer2013', which reads no table beside the "
                             "CSV (subject tables are for label_folders); remove collect.labels")
        if self.label_map is not None:
            _check_label_names(self.label_map)
        return self

    @property
    def is_expression(self) -> bool:
        return self.source in EXPRESSION_SOURCES


EXPRESSION_SOURCES = ("expression_twin", "label_folders", "fer2013")


def _check_label_names(names: tuple[str, ...]) -> None:
    """Label names become class names in labels.json, the plots and MLflow: blank ones, path-like
    ones, and two that differ only in case or spaces (two classes of one expression) are refused."""
    for name in names:
        if not name.strip() or name != name.strip() or "/" in name or "\\" in name:
            raise ValueError(f"collect.label_map: {name!r} is not a label name (not blank, no surrounding spaces, "
                             "no / or \\)")
    folded: dict[str, str] = {}
    for name in names:
        if name.casefold() in folded:
            raise ValueError(f"collect.label_map: {folded[name.casefold()]!r} and {name!r} name one label twice "
                             "(names are compared without regard to case)")
        folded[name.casefold()] = name


# ------------------------------------------------------------------------------ detect
class DetectConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1)
    min_face_size: int = Field(40, ge=12, description="MTCNN's smallest face in pixels; larger is faster")
    min_probability: float = Field(0.90, ge=0.0, le=1.0)
    margin: float = Field(0.25, ge=0.0, le=1.0, description="added to each side, as a fraction of the box side")
    crop_size: int = Field(160, ge=32, description="side of the saved square crops")
    multiple_faces: Literal["most_probable", "largest", "reject"] = "most_probable"
    pre_cropped: bool = Field(
        False, description="expression data: the images already are face crops (FER2013); detect passes them through"
    )
    min_side: int = Field(
        160, ge=48, description="expression data: smaller images are upscaled to this side before MTCNN"
    )


# ------------------------------------------------------------------------------- clean
class CleanConfig(Section):
    iqr_k: float = Field(1.5, gt=0.0, description="thesis 3.1.4: outside [Q1 - k IQR, Q3 + k IQR] is an outlier")
    min_group_size: int = Field(4, ge=2, description="smaller (subject, camera) groups are kept whole")
    misalignment: bool = Field(True, description="also flag source/target misalignment (IQR misses it)")
    misalignment_k: float = Field(1.5, gt=0.0)
    misalignment_floor: float = Field(
        0.2,
        ge=0.0,
        description="alignment errors (in inter-ocular distances) at or below this are never outliers: "
        "0.2 IOD is about half an eye's width (the rig's eye still lands on the face's eye) and the size "
        "of MTCNN's eye-landmark error on turned heads",
    )


# ----------------------------------------------------------------------------- augment
class RandomRange(Section):
    p: float = Field(ge=0.0, le=1.0)
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> RandomRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class AugmentConfig(Section):
    """Thesis 3.1.5 and Table 3.1. Applied on the fly in training, one draw per pair."""

    image_size: int = Field(
        128, ge=64, multiple_of=32, description="the generators halve the size five times (Table 3.4): any multiple of 32 from 64"
    )
    target_mean: float | None = Field(
        None, gt=0.0, lt=255.0, description="mu_0 of thesis 3.1.5; None = mean over all kept targets"
    )
    scale: RandomRange = RandomRange(p=0.7, low=1.0, high=1.2)
    shift: RandomRange = RandomRange(p=0.7, low=-0.0625, high=0.0625)
    rotation: RandomRange = RandomRange(p=0.7, low=-math.pi / 4, high=math.pi / 4)
    gamma: RandomRange = RandomRange(p=0.5, low=98.0, high=102.0)  # per cent
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)


# ------------------------------------------------------------------------------- split
class SplitConfig(Section):
    strategy: Literal["subject", "random"] = Field(
        "subject", description="subject: disjoint subjects (default); random: thesis 3.1.6, 90/10 by pair"
    )
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=SEED_MAX)


# ------------------------------------------------------------------------------- train
Distance = Literal["l1", "discriminator", "vgg19", "identity"]


class TrainConfig(Section):
    """Thesis 3.2, 3.4, 3.5 (Table 3.8). Defaults are configuration ED-LS-LR-2."""

    generator: Literal["encoder_decoder", "multinorm"] = "encoder_decoder"
    adversarial_loss: Literal["original", "least_squares", "hinge"] = "least_squares"
    perceptual: Literal["none", "discriminator", "vgg19"] = "none"
    perceptual_layers: tuple[int, ...] = Field(
        (1, 2, 3, 4), strict=False, description="discriminator: conv block indices; vgg19: ignored (layers 1,6,11,20,29)"
    )
    lambda_p: float = Field(1.0, ge=0.0)
    lambda_lr: float = Field(2.0, ge=0.0, description="latent reconstruction, eq. 3.1 (needs E)")
    lambda_sd: float = Field(0.0, ge=0.0, description="style diversity, eq. 3.2")
    sd_image_distance: Distance = "l1"
    sd_latent_distance: Literal["const", "l1"] = "l1"
    lambda_ir: float = Field(0.0, ge=0.0, description="identity reconstruction, eq. 3.3 (needs E)")
    ir_distance: Distance = "l1"
    lambda_kl: float = Field(
        0.0, ge=0.0, description="KL of E's posterior to N(0, I) on the identity reconstruction path (BicycleGAN's "
        "cVAE-GAN, not in the thesis): makes the codes of real faces the z that sampling draws; needs lambda_ir")
    style_mapping: bool = Field(False, description="mapping network L, Table 3.7")
    latent_dim: int = Field(512, ge=1)
    width: float = Field(1.0, gt=0.0, le=4.0, description="channel multiplier on Tables 3.3-3.6 (1.0 = thesis)")

    batch_size: int = Field(12, ge=1)
    epochs_fixed: int = Field(10, ge=0)
    epochs_decay: int = Field(10, ge=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs)")
    max_minutes: float | None = Field(
        None, gt=0.0, description="wall budget: stop (and checkpoint) after the first step past it; resumed time counts"
    )
    lr_g: float = Field(1.5e-4, gt=0.0, le=LR_MAX)
    lr_d: float = Field(4.5e-4, gt=0.0, le=LR_MAX)
    lr_e: float = Field(1.5e-4, gt=0.0, le=LR_MAX)
    lr_l: float = Field(4.5e-6, gt=0.0, le=LR_MAX)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    init: Literal["xavier", "kaiming", "default"] = "xavier"

    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="0 disables the EMA generator")
    d_augment: list[Literal["brightness", "contrast", "translation", "cutout"]] = Field(
        default_factory=list, description="differentiable augmentation of D's (source, image) pairs, real and "
        "generated alike (Zhao et al. 2020; nirgan.training.diff_augment); [] = none, as the thesis")
    r1_gamma: float = Field(0.0, ge=0.0)
    lambda_attr: float = Field(0.0, ge=0.0, description="attribute preservation (thesis 5.2); needs the estimator")
    condition_on_labels: bool = Field(False, description="pose/gaze labels as extra conditioning (thesis 5.2)")
    identity_epochs: int = Field(5, ge=1, description="epochs of the NIR identity network when a distance needs it")
    attr_estimator_epochs: int = Field(15, ge=1, description="epochs of the pose/gaze estimator when lambda_attr > 0")
    log_model: bool = Field(True, description="log the EMA generator to MLflow and register it at the end")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "bf16"
    compile: Literal["none", "default", "reduce-overhead"] = Field(
        "none", description="torch.compile mode for the trained networks; reduce-overhead adds CUDA graphs"
    )
    deterministic: bool = False
    seed: int = Field(0, ge=0, le=SEED_MAX)
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(50, ge=1, description="steps between loss logs (one host sync each)")
    checkpoint_every: int = Field(500, ge=1)
    sample_sources: int = Field(6, ge=1, description="fixed test sources in the per-epoch grid")
    sample_latents: int = Field(6, ge=1)

    @property
    def epochs(self) -> int:
        return self.epochs_fixed + self.epochs_decay

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.epochs == 0:
            raise ValueError("train.epochs_fixed + train.epochs_decay must be at least 1")
        if self.lambda_kl > 0 and self.lambda_ir == 0:
            raise ValueError(f"train.lambda_kl = {self.lambda_kl} acts on the identity reconstruction path, which "
                             "train.lambda_ir = 0 switches off; set train.lambda_ir > 0 or train.lambda_kl = 0")
        if self.lambda_kl > 0 and self.style_mapping:
            raise ValueError("train.lambda_kl pulls E's codes onto z ~ N(0, I), but with train.style_mapping E "
                             "predicts the style s = L(z), whose distribution is learnt; use one or the other")
        return self


# --------------------------------------------------------------------- expression train
class ExpressionTrainConfig(Section):
    """The expression models (issue 13; ``nirgan.expression.trainer``).

    ``None`` for a learning rate, the batch size or the adversarial loss means the model's paper
    value: cgan and cgan_encoder 2e-4 / 2e-4 / batch 64 (Milan section 7, KTH 2.3: Adam beta1 0.5;
    Milan prints beta1 0.05, beta2 0.09, which Keras would not train with, so the DCGAN values are
    used), stargan 1e-4 / 1e-4 / batch 16, WGAN-GP with 5 critic steps (Choi et al. 2018, 4.1).
    The class defaults are the papers'; the expression params.yaml shrinks them for a CPU.
    """

    model: Literal["cgan", "cgan_encoder", "stargan"] = "stargan"
    image_size: int = Field(64, ge=32, description="must equal the prepared images' side (64 or 128)")
    width: float = Field(1.0, gt=0.0, le=4.0, description="channel multiplier (1.0 = the paper)")
    latent_dim: int = Field(100, ge=1, description="cgan / cgan_encoder z (Milan: 100, uniform in [-1, 1])")
    conv_dim: int = Field(32, ge=4, description="StarGAN first-layer filters (Imperial ch. 8: 32; Choi: 64)")
    res_blocks: int = Field(6, ge=0, description="StarGAN residual blocks (Choi: 6; Imperial: 3 to 5)")
    d_layers: int | None = Field(None, ge=1, description="StarGAN D strided layers; None = log2(S) - 2")
    upsample: Literal["transposed", "nearest", "bilinear"] = Field(
        "transposed", description="G up-sampling (stargan, cgan, cgan_encoder): transposed convs (the papers) or a "
        "nearest / bilinear x2 resize + conv (no checkerboard; issue 25)")
    adversarial: Literal["wgan_gp", "least_squares"] | None = Field(
        None, description="StarGAN adversarial loss; None = wgan_gp (the paper)")
    n_critic: int | None = Field(None, ge=1, description="D updates per G update; None = 5 for wgan_gp, else 1")
    lambda_cls: float = Field(1.0, ge=0.0, description="StarGAN domain classification (Choi eq. 7)")
    lambda_rec: float = Field(10.0, ge=0.0, description="StarGAN cycle reconstruction (Choi eq. 7)")
    lambda_gp: float = Field(10.0, ge=0.0, description="StarGAN gradient penalty (Choi eq. 8)")
    lambda_latent: float = Field(1.0, ge=0.0, description="KTH eq. 13 (encoder phase)")
    lambda_image: float = Field(1.0, ge=0.0, description="KTH eq. 14 (encoder phase)")
    encoder_fraction: float = Field(
        0.3, gt=0.0, lt=1.0, description="cgan_encoder: share of the steps that train E with G frozen (KTH 2.2: after G)")
    lr_g: float | None = Field(None, gt=0.0, le=LR_MAX)
    lr_d: float | None = Field(None, gt=0.0, le=LR_MAX)
    lr_e: float | None = Field(None, gt=0.0, le=LR_MAX)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    lr_decay_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="learning rates decay linearly to zero over this last share of the steps "
        "(StarGAN: the second half)")
    batch_size: int | None = Field(None, ge=1, description="global batch; None = the model's paper value")
    steps: int = Field(200_000, ge=1, description="D updates (an iteration of the StarGAN code)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs; the schedule "
                                  "still spans ``steps``)")
    max_minutes: float | None = Field(None, gt=0.0, description="wall budget: stop (and checkpoint) after it")
    hflip_p: float = Field(0.5, ge=0.0, le=1.0, description="random horizontal flip of training faces")
    d_augment: list[Literal["brightness", "contrast", "translation", "cutout"]] = Field(
        default_factory=list, description="differentiable augmentation of D's real and generated inputs "
        "(Zhao et al. 2020; nirgan.training.diff_augment); [] = none, as the papers")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="0 disables the EMA generator")
    log_model: bool = Field(True, description="log the translator to MLflow at the end")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "bf16"
    deterministic: bool = False
    seed: int = Field(0, ge=0, le=SEED_MAX)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    sample_inputs: int = Field(6, ge=1, description="fixed test faces in the sample grid (rows; columns = labels)")

    def resolved(self) -> dict[str, Any]:
        """The paper values behind every ``None`` (see the class docstring)."""
        star = self.model == "stargan"
        adv = self.adversarial or "wgan_gp"
        return {
            "lr_g": self.lr_g or (1e-4 if star else 2e-4), "lr_d": self.lr_d or (1e-4 if star else 2e-4),
            "lr_e": self.lr_e or 2e-4, "batch_size": self.batch_size or (16 if star else 64),
            "adversarial": adv, "n_critic": self.n_critic or (5 if star and adv == "wgan_gp" else 1),
        }


# ---------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
    seed: int = Field(0, ge=0, le=SEED_MAX)
    seeds: int = Field(3, ge=1, description="draws for random-dependent metrics (mean and std)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="bf16 autocast for the images evaluate draws from the generators (as the generate "
        "stage draws them) and for the realism judges it trains, where bf16 is native (CUDA; CPUs with "
        "AVX512-BF16 or AMX), else fp32 (eval.json's evaluate_precision says which ran); the pose estimators, "
        "the stage's instrument, always train in fp32")
    batch_size: int = Field(50, ge=1)
    fid: bool = Field(True, description="ImageNet Inception-V3 FID (pytorch-fid); needs the cached weights")
    fid_weights: Path | None = Field(None, strict=False, description="explicit pt_inception-2015-12-05 file; else TORCH_HOME")
    lpips: bool = True
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    lpips_version: Literal["0.0", "0.1"] = "0.1"
    lpips_weights: Path | None = Field(
        None, strict=False, description="explicit torchvision backbone file (alexnet-owt-7be5be79.pth for alex); else TORCH_HOME"
    )
    diversity_sources: int = Field(20, ge=1, description="N test sources")
    diversity_latents: int = Field(10, ge=2, description="M latents per source")
    estimator_epochs: int = Field(
        15, ge=1, description="head-pose/gaze estimator (also the feature net of the *_nirfeat realism figures)"
    )
    estimator_resolution: int = Field(
        64, ge=32, multiple_of=32,
        description="working size of the estimator (images are area-resized); 64 keeps it within a CPU minute",
    )
    feature_epochs: int = Field(
        10, ge=1, description="NIR identity network trained by evaluate when the run saved none (identity figures)"
    )
    utility_seeds: int = Field(
        2, ge=1, description="train-on-synthetic/test-on-real: estimator seeds per arm (mean and std)"
    )
    utility_latents: int = Field(1, ge=1, description="TSTR: generated images per train source (k latents)")
    judge_seeds: int = Field(3, ge=1, description="realism judge: partitions and classifier seeds (mean and std)")
    judge_epochs: int = Field(20, ge=1, description="realism judge: passes over its training half")
    judge_few_shot_draws: int = Field(3, ge=1, description="few-shot judges: draws per k (2, 4, 8 images) and seed")
    judge_few_shot_steps: int = Field(120, ge=1, description="few-shot judges: training steps of each")


class ExpressionEvaluateConfig(Section):
    """The readers evaluate_expression trains on the real train split to read translated faces
    (``evaluate`` holds the keys it shares with the NIR evaluate). A small split needs more
    passes than its epochs give, hence the floors on the steps."""

    classifier_epochs: int = Field(15, ge=1, description="expression classifier (expr_target_accuracy): passes")
    classifier_min_steps: int = Field(150, ge=1, description="expression classifier: training steps at least")
    auditor_epochs: int = Field(20, ge=1, description="auditor (expr_audit_*): passes over the train split")
    auditor_min_steps: int = Field(200, ge=1, description="auditor: training steps at least")


# ------------------------------------------------------------------------------ generate
class LabelRange(Section):
    """A label's requested distribution: uniform on [low, high], degrees."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> LabelRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


class GenerateConfig(Section):
    """The dataset spec of ``nirgan generate`` and the ``generate`` stage (README "Generate a
    labelled dataset"). Row i of the dataset depends only on (seed, i), so a shard is
    reproducible on its own."""

    count: int = Field(200, ge=1, description="images in the dataset")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    latents_per_source: int = Field(1, ge=1, description="consecutive images that share a source row (diversity)")
    image_size: int = Field(128, ge=64, multiple_of=32, description="side of the sources and images")
    shard_size: int = Field(100, ge=1, description="images per shard (the unit of atomic writes and of retries)")
    batch_size: int = Field(
        16, ge=1, description="images per generator and label-check batch (16: fastest fp32 on one CPU thread)"
    )
    workers: int = Field(
        0, ge=0, description="processes writing shards in parallel; 0 = one per CPU core on the CPU, but "
        "none with fewer images than pay for its start (nirgan.generation.dataset.auto_workers), 1 on a GPU"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="bf16 autocast for the generator and the label check where bf16 is native (CUDA; CPUs "
        "with AVX512-BF16 or AMX), else fp32 (dataset.json's precision says which ran): 115 against 86 images/s on "
        "2 AVX512-BF16 cores (benchmarks/generate_speed.py)"
    )
    model: str = Field(
        "models", description='a folder with generator.pt (+ label_estimator.pt), or "models:/nirgan-generator@<alias>" '
        'or "models:/nirgan-generator/<version>" (MLflow registry)',
    )
    rig: Literal["twin", "folder"] = "twin"
    rig_path: str | None = Field(None, description="folder rig: a folder of source renders")
    rig_labels: str | None = Field(None, description="folder rig: its labels table (CSV/Parquet), collect's columns; "
                            "without one the labels are unknown")
    rig_framing: Literal["auto", "crop", "none"] = Field(
        "auto", description="folder rig: cut each render as detect cut training's sources (crop), only resize "
        "(none: they are detect-style crops already), or decide per render (auto); nirgan.generation.framing")
    labels_table: str | None = Field(None, description="exact label rows (CSV/Parquet) instead of the ranges")
    head_yaw: LabelRange = LabelRange(low=-30.0, high=30.0)
    head_pitch: LabelRange = LabelRange(low=-15.0, high=15.0)
    head_roll: LabelRange = LabelRange(low=-10.0, high=10.0)
    gaze_yaw: LabelRange = LabelRange(low=-15.0, high=15.0)
    gaze_pitch: LabelRange = LabelRange(low=-15.0, high=15.0)
    glasses_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_label_error_deg: float | None = Field(
        None, gt=0.0, description="drop (and replace) images whose label check is off by more; None = keep all"
    )
    max_attempts: int = Field(4, ge=1, description="latents tried per requested row before an overflow row replaces it")
    out_dir: str = "data/generated"

    @model_validator(mode="after")
    def _rig_inputs(self) -> GenerateConfig:
        if self.rig == "folder" and self.rig_path is None:  # rig_labels is optional: without it labels are unknown
            raise ValueError("generate.rig_path is required when generate.rig is 'folder'")
        return self


# ------------------------------------------------------------------------- orchestrate
class OrchestrateConfig(Section):
    """How the ``train-nir`` and ``train-expression`` Prefect flows (flows/experiment.py) and
    ``generate-nir`` run their task runs; no stage reads it."""

    retries: int = Field(2, ge=0, description="retries of a failed stage task run (train resumes from its checkpoint)")
    retry_delay_seconds: float = Field(10.0, ge=0.0)
    stage_timeout_minutes: float | None = Field(None, gt=0.0, description="kill a stage running longer; None = no limit")


class Config(Section):
    task: Literal["nir", "expression"] = Field(
        "nir", description="nir: rig render -> NIR pairs; expression: label-conditioned grayscale faces"
    )
    collect: CollectConfig = CollectConfig()
    detect: DetectConfig = DetectConfig()
    clean: CleanConfig = CleanConfig()
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    expression_train: ExpressionTrainConfig = ExpressionTrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    expression_evaluate: ExpressionEvaluateConfig = ExpressionEvaluateConfig()
    generate: GenerateConfig = GenerateConfig()
    orchestrate: OrchestrateConfig = OrchestrateConfig()

    @model_validator(mode="after")
    def _task_matches_source(self) -> Config:
        if (self.task == "expression") != self.collect.is_expression:
            wanted = ", ".join(EXPRESSION_SOURCES) if self.task == "expression" else "twin, folder, videos"
            raise ValueError(f"collect.source {self.collect.source!r} does not suit task {self.task!r} (one of {wanted})")
        return self


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def parse_config(data: dict[str, Any], origin: str = "params") -> Config:
    """Validate a params mapping; errors name every bad dotted key."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{_dotted(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{origin}: invalid parameters: {problems}") from None


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of stage sections")
    return parse_config(data, origin=str(path))


def require_task(cfg: Config, task: str, stage: str) -> None:
    """A stage of one family's pipeline refuses the other's params: the data would be read as the
    wrong kind and fail far from the cause."""
    if cfg.task != task:
        other = f"{stage}_expression" if cfg.task == "expression" else stage
        raise ConfigError(f"task: {cfg.task!r}: this is the {task} pipeline's {stage} stage; "
                          f"a {cfg.task} run uses `nirgan stage {other}`")


def stage_params(cfg: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """The params a stage declares in dvc.yaml (sections or dotted keys, e.g. ``("train",
    "augment.image_size")``), nested as in params.yaml: what it logs to MLflow as its params.

    Dumped by pydantic's own ``BaseModel.model_dump``: logging the declared keys is not a use of
    them, and tests/test_stage_params.py, which measures what each stage reads by running it,
    must not count it as one."""
    include: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        node = include
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = True
    return BaseModel.model_dump(cfg, mode="json", include=include)
