"""Stage evaluate_expression: the figures of issue 13 item 3 for a trained expression model.

Inputs: ``data/prepared`` and ``data/split`` (read by ``nirgan.expression.data.load_expression_split``)
and ``models/expression_generator.pt`` (``nirgan.expression.artifacts.load_expression_translator``).
Outputs: ``metrics/eval_expression.json`` (flat keys below), ``plots/`` (translation_grid.png,
confusion.png, samples_per_label.png, confusion.json), all logged into the training run
(``models/mlflow_run.json``, experiment nirgan-expression); the generator is registered as
``nirgan-expression-generator`` only after this evaluation succeeded.

Keys (a figure that cannot be computed is "unavailable" with a ``<key>_reason``):
  expr_classifier_real_accuracy[_<label>]  the classifier (trained here on the real train split) on
                              the real test faces: the ceiling of what a translation can score
  expr_target_accuracy[_<label>]  share of translations of every test face to every OTHER label
                              (n x (C - 1)) that the classifier rates as the target; cgan ignores its
                              input, so for it these are samples G(z, label) (expr_translation_input)
  expr_target_accuracy_relative[_<label>]  translated / real accuracy of that label (issue 25);
                              expr_target_accuracy_labels_above_real[_count] names the labels read
                              better translated than real: a classifier hack, warned in the log
  <real or target key>_blur, _resize   the same readings after a 1 px blur (at 64 px) and a 2x
                              down-up resize, which expressions survive and stripes do not
  expr_audit_real_accuracy[_<label>], expr_audit_target_accuracy[_<label>],
  expr_audit_relative_accuracy[_<label>], expr_audit_target_accuracy_labels_above_real[_count],
  expr_audit_*_blur, expr_audit_*_resize   the same from the auditor
                              (nirgan.expression.audit): another architecture and seed,
                              trained with blur, resize and noise, that the generator never saw.
                              The figure to trust is expr_audit_relative_accuracy
  expr_hf_share_real, expr_hf_share_translated, expr_hf_share_ratio[_<label>]   share of spectral
                              energy above half Nyquist
  expr_hf_peak_ratio[_<label>], expr_hf_peak_frequency_cycles_per_px   the most that any frequency
                              above half Nyquist gains in the translations against the real test
                              faces (each spectrum normalised), and where; 1 to 3 is real-like;
                              expr_hf_peak_ratio_real_baseline: real train against test faces
  expr_hf_labels_textured     labels whose translations carry 1.5x the real faces' share, or a peak
                              4x the baseline's (stripes, checkerboard)
  expr_label_coverage         share of labels whose outputs are rated as that label >= 50 % of the
                              time; expr_labels_not_covered names the others
  expr_identity_cos_translated    identity-embedding cosine of input and translation
  expr_identity_cos_same_subject  real test pairs of one subject (other frames and expressions)
  expr_identity_cos_diff_subject  real test pairs of two subjects
  expr_identity_rank1_translated  share of translations whose nearest real test face (the input
                              left out) is of the input's subject; _real: the same for each real
                              test face (itself left out), the reference
                              (identity net trained here on the train split's subjects)
  expr_identity_instrument_auc    that net's ROC AUC telling same- from different-subject pairs of
                              the real test faces; expr_identity_informative false (with a _reason)
                              under nirgan.metrics.identity.INSTRUMENT_AUC_FLOOR
  expr_judge_auc[_std], expr_judge_auc_real_vs_real[_std], expr_judge_auc_blurred_real[_std]
                              the realism judge (nirgan.metrics.judge): real faces vs faces translated
                              to a random other label; 0.5 = indistinguishable
  expr_judge_full_informative, expr_judge_few_shot_informative   false (with a _reason) where that
                              judge's blurred-real baseline AUC is under 0.75: it cannot tell blur,
                              so its reading of the translations says nothing
  expr_fid_clsfeat[_real_baseline]   Frechet distance on the classifier's pooled features, test
                              faces vs translations (baseline: vs the real train faces)
  expr_swd_laplacian[_real_baseline] ProGAN's SWD (x1e3) on the same pairs
  expr_fid                    ImageNet Inception FID, when its weights are on disk
  expr_diversity_within_label  mean pairwise MS-SSIM of G(z, label) over z, per label, averaged
                              (latent models; near 1 = mode collapse); _real: real test faces of one
                              label; expr_diversity_translations_within_label: translations of
                              different inputs to one label
Wall seconds (not figures: they differ from run to run): evaluate_seconds_<phase> for classifier,
  target_accuracy, auditor, identity, realism, diversity, figures, and evaluate_seconds_total
  (their sum: loading and MLflow logging are in the stage log).

Everything random is seeded by ``evaluate.seed``: the same inputs give the same file.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirgan import tracking
from nirgan.config import Config, DataError
from nirgan.devices import resolve_device
from nirgan.expression.data import ExpressionSplit, load_expression_split
from nirgan.io import atomic_dir, stage_log, write_image, write_json
from nirgan.expression import measures as m
from nirgan.expression import audit
from nirgan.expression.figures import confusion_png, first_of_each_label, samples_grid, translation_grid
from nirgan.metrics.features import frechet_distance, sliced_wasserstein_laplacian
from nirgan.metrics.fid import inception_features, load_fid_inception, resolve_fid
from nirgan.metrics.identity import (
    instrument_verdict,
    paired_cosine,
    rank1_same_subject,
    same_and_different,
    verification_auc,
)
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.laps import Laps
from nirgan.metrics.weights import load_reference
from nirgan.expression.artifacts import load_expression_translator
from nirgan.expression.models.translator import ExpressionTranslator, to_model_input
from nirgan.training.identity import train_identity_net

log = logging.getLogger("nirgan.evaluate_expression")

COVERAGE_THRESHOLD = 0.5
DIVERSITY_DRAWS = 10  # z draws (or inputs, or real faces) per label for the MS-SSIM figures
JUDGE_BLUR_FLOOR = 0.75  # a judge reading whose blurred-real baseline AUC is lower is marked not informative


def run(cfg: Config, prepared_dir: Path, split_dir: Path, model_dir: Path, metrics_path: Path,
        plots_dir: Path) -> dict[str, Any]:
    e = cfg.evaluate
    started = time.perf_counter()
    split = load_expression_split(Path(prepared_dir), Path(split_dir))
    if len(split.test_labels) < 2 or len(split.train_labels) < 2 or split.n_labels < 2:
        raise DataError(f"{split_dir}: evaluate_expression needs at least 2 train faces, 2 test faces and 2 labels, "
                        f"got {len(split.train_labels)}, {len(split.test_labels)} and {list(split.names)}")
    with stage_log("evaluate_expression", train_faces=len(split.train_labels), test_faces=len(split.test_labels)) as counts:
        device = resolve_device(e.device, "evaluate.device")
        translator = load_expression_translator(Path(model_dir) / "expression_generator.pt", map_location=device)
        if list(translator.names) != list(split.names):
            raise DataError(f"{model_dir}/expression_generator.pt was trained on labels {translator.names}, "
                             f"the data has {list(split.names)}")
        metrics, figures = evaluate_translator(cfg, split, translator, device)
        with atomic_dir(plots_dir) as tmp:
            for name, image in figures.items():
                write_image(tmp / f"{name}.png", image)
            write_json(tmp / "confusion.json", {"names": list(split.names), **metrics.pop("_confusion")})
        metrics = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        write_json(metrics_path, metrics)
        run_id = tracking.log_evaluation(Path(model_dir) / "mlflow_run.json", metrics, Path(plots_dir),
                                         Path(metrics_path), task="expression")
        counts.update(model=translator.kind, keys=len(metrics), mlflow_run=run_id or "none",
                      seconds=round(time.perf_counter() - started, 1))
    return metrics


def evaluate_translator(cfg: Config, split: ExpressionSplit, translator: ExpressionTranslator,
                        device: torch.device) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics with a ``_confusion`` entry for plots/confusion.json, {figure name: RGB image})."""
    e, x = cfg.evaluate, cfg.expression_evaluate
    names, c = list(split.names), split.n_labels
    t = Laps(log, "evaluate_expression")
    out: dict[str, Any] = {"expr_model": translator.kind, "expr_labels": ",".join(names),
                           "expr_test_faces": len(split.test_labels), "expr_train_faces": len(split.train_labels),
                           "expr_translation_input": ("ignored: cgan draws G(z, label), so its translations are samples"
                                                      if translator.kind == "cgan" else "the test face")}

    # 1. the classifier, on real test faces and on every test face sent to every other label; then
    # the auditor, a reader the generator never saw (issue 25), and both after a blur and a resize
    clf = m.train_expression_classifier(split.train_images, split.train_labels, c, epochs=x.classifier_epochs,
                                        seed=e.seed, min_steps=x.classifier_min_steps, device=device)
    t("classifier")
    rows, targets = m.translation_targets(split.test_labels, c)
    translated = translator.translate(split.test_images[rows], targets, z=_uniform_z(translator, len(rows), e.seed))
    real_test = to_model_input(split.test_images)
    classifier_reading, conf, real_conf = audit.reading(
        clf, real_test, split.test_labels, translated, targets, names, "expr_classifier_real_accuracy",
        "expr_target_accuracy", "expr_target_accuracy_relative")
    out.update(classifier_reading)
    out["expr_translations"] = len(targets)
    coverage, missed = m.label_coverage(conf, COVERAGE_THRESHOLD)
    out.update(expr_label_coverage=coverage, expr_label_coverage_threshold=COVERAGE_THRESHOLD,
               expr_labels_not_covered=",".join(names[i] for i in missed) or "none")
    out["_confusion"] = {"translated": conf.tolist(), "real_test": real_conf.tolist()}
    t("target_accuracy", f"target-label accuracy ({len(targets)} translations)")
    auditor = audit.train_expression_auditor(split.train_images, split.train_labels, c,
                                             seed=e.seed + audit.AUDIT_SEED_OFFSET, epochs=x.auditor_epochs,
                                             min_steps=x.auditor_min_steps, device=device)
    auditor_reading, audit_conf, _ = audit.reading(
        auditor, real_test, split.test_labels, translated, targets, names, "expr_audit_real_accuracy",
        "expr_audit_target_accuracy", "expr_audit_relative_accuracy")
    out.update(auditor_reading, expr_audit_reader=f"ExpressionAuditor (stride-1 5x5, max-pooled), seed "
               f"{e.seed + audit.AUDIT_SEED_OFFSET}, trained here on the real train split with blur, resize and noise")
    out["_confusion"]["translated_audit"] = audit_conf.tolist()
    out.update(audit.high_frequency(real_test, translated, targets, names, real_train=to_model_input(split.train_images)))
    t("auditor", "auditor, perturbations and high-frequency share")

    # 2. identity preservation
    out.update(_identity(cfg, split, translator, rows, translated, device))
    t("identity")

    # 3. realism: the judge, and FID-style distances with their real baselines
    out.update(_realism(cfg, split, translator, clf, translated, device))
    t("realism")

    # 4. mode collapse: diversity within a label
    out.update(_diversity(cfg, split, translator, rows, targets, translated))
    t("diversity")

    # 5. figures
    pick = first_of_each_label(split.test_labels)
    every = np.tile(np.arange(c), len(pick))
    grid_out = translator.translate(split.test_images[np.repeat(pick, c)], every,
                                    z=_uniform_z(translator, len(every), e.seed + 1))
    figures = {
        "translation_grid": translation_grid(to_model_input(split.test_images[pick]),
                                             grid_out.view(len(pick), c, *grid_out.shape[1:]),
                                             split.test_labels[pick], names),
        "confusion": confusion_png(conf, names, f"{translator.kind}: target label vs classifier"),
        "samples_per_label": samples_grid(_per_label_outputs(split, translator, e.seed, 8), names),
    }
    t("figures")
    out.update(t.metrics())
    return out, figures


# -------------------------------------------------------------------------------- parts
def _uniform_z(translator: ExpressionTranslator, n: int, seed: int) -> torch.Tensor | None:
    """Independent z per row (uniform in [-1, 1], the papers' prior) for latent models, else None."""
    return translator.draw_z(n, seed) if translator.latent_dim else None


def _identity(cfg: Config, split: ExpressionSplit, translator: ExpressionTranslator, rows: np.ndarray,
              translated: torch.Tensor, device: torch.device) -> dict[str, Any]:
    keys = ("expr_identity_cos_translated", "expr_identity_cos_same_subject", "expr_identity_cos_diff_subject",
            "expr_identity_rank1_translated", "expr_identity_rank1_real")
    train_subjects = np.unique(split.train_subjects[split.train_subjects != ""])
    test_subjects = np.unique(split.test_subjects[split.test_subjects != ""])
    reason = None
    if len(train_subjects) < 2:
        reason = f"the train split has {len(train_subjects)} known subjects; an identity net needs at least 2"
    elif len(test_subjects) < 2 or (split.test_subjects == "").any():
        reason = "the test faces' subjects are unknown or fewer than 2: no same/different-subject references"
    if reason:
        return {**{k: "unavailable" for k in keys}, **{f"{k}_reason": reason for k in keys}}
    known = split.train_subjects != ""
    net = train_identity_net(split.train_images[known], split.train_subjects[known], epochs=cfg.evaluate.feature_epochs,
                             device=device, seed=cfg.evaluate.seed)

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net.embed(x[i : i + 128].to(device)).float().cpu() for i in range(0, len(x), 128)])

    real = embed(to_model_input(split.test_images))
    same, different = same_and_different(real, split.test_subjects, real[:0])
    out: dict[str, Any] = {"expr_identity_cos_same_subject": same, "expr_identity_cos_diff_subject": different,
                           "expr_identity_net": f"trained here on {len(train_subjects)} train subjects"}
    # the instrument beside its reading, as in the NIR evaluate (nirgan.metrics.identity)
    out.update({f"expr_{k}": v for k, v in instrument_verdict(verification_auc(real, split.test_subjects)).items()})
    if translator.kind == "cgan":
        why = "cgan draws G(z, label) and never sees the input face: there is no identity to preserve"
        out.update(expr_identity_cos_translated="unavailable", expr_identity_cos_translated_reason=why,
                   expr_identity_rank1_translated="unavailable", expr_identity_rank1_translated_reason=why)
    else:
        fake = embed(translated)
        out["expr_identity_cos_translated"] = float(paired_cosine(real[rows], fake).mean())
        # the nearest other real test face: is it the input's subject? (beside the same for real faces)
        out["expr_identity_rank1_translated"] = rank1_same_subject(real, split.test_subjects, fake, rows)
    out["expr_identity_rank1_real"] = rank1_same_subject(real, split.test_subjects, real, np.arange(len(real)))
    return out


def _realism(cfg: Config, split: ExpressionSplit, translator: ExpressionTranslator, clf: torch.nn.Module,
             translated: torch.Tensor, device: torch.device) -> dict[str, Any]:
    e = cfg.evaluate
    # The judge's pools: all real faces; class 1 = faces of the other half sent to a random other label.
    faces = to_model_input(np.concatenate([split.train_images, split.test_images]))
    own = np.concatenate([split.train_labels, split.test_labels])
    shift = np.random.default_rng(e.seed).integers(1, max(split.n_labels, 2), len(own))
    targets = ((own + shift) % split.n_labels).astype(np.float64)[:, None]

    def generate(sources: torch.Tensor, z: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        # realism_judge draws z ~ N(0, 1); the translator's prior is uniform in [-1, 1]: map by the normal CDF.
        z = torch.special.erf(z / math.sqrt(2)) if translator.latent_dim else None
        return translator.translate(sources, labels[:, 0].astype(np.int64), z=z)

    judge, _ = realism_judge(faces, faces, targets, generate, None, translator.latent_dim, seeds=e.judge_seeds,
                             epochs=e.judge_epochs, seed=e.seed, device=device, few_shot_draws=e.judge_few_shot_draws,
                             few_shot_steps=e.judge_few_shot_steps, precision=e.precision)
    out: dict[str, Any] = {f"expr_{k}": v for k, v in judge.items() if not k.startswith("judge_auc_untrained")}
    out.update(_judge_informative(out))

    real_test = to_model_input(split.test_images)
    feats_test = m.classifier_features(clf, real_test)
    out["expr_fid_clsfeat"] = frechet_distance(feats_test, m.classifier_features(clf, translated))
    out["expr_fid_clsfeat_real_baseline"] = frechet_distance(feats_test, m.classifier_features(clf, split.train_images))
    n = len(real_test)
    gen = torch.Generator().manual_seed(e.seed)
    same_size_fake = translated[torch.randperm(len(translated), generator=gen)[:n]]
    same_size_real = to_model_input(split.train_images[torch.randperm(len(split.train_images), generator=gen)[:n].numpy()])
    if len(same_size_fake) == n and len(same_size_real) == n:
        out["expr_swd_laplacian"] = sliced_wasserstein_laplacian(real_test, same_size_fake, e.seed)["mean"]
        out["expr_swd_laplacian_real_baseline"] = sliced_wasserstein_laplacian(real_test, same_size_real, e.seed)["mean"]
    else:
        why = f"SWD compares equal counts: {n} test faces, {len(translated)} translations, {len(split.train_images)} train faces"
        out.update(expr_swd_laplacian="unavailable", expr_swd_laplacian_reason=why)
    weights, why = resolve_fid(e.fid_weights) if e.fid else (None, "disabled (evaluate.fid: false)")
    inception = None
    if weights is None:
        out.update(expr_fid="unavailable", expr_fid_reason=why)
    else:  # only the reference file gives a figure called FID (metrics/weights.py)
        inception, record = load_reference("expr_fid", weights, lambda w: load_fid_inception(w, device))
        out.update(record)
    if inception is not None:
        real_f = inception_features(inception, real_test, e.batch_size)
        out["expr_fid"] = frechet_distance(real_f, inception_features(inception, translated, e.batch_size))
        out["expr_fid_real_baseline"] = frechet_distance(
            real_f, inception_features(inception, to_model_input(split.train_images), e.batch_size))
    return out


def _judge_informative(judge: dict[str, Any]) -> dict[str, Any]:
    """Whether each judge reading (full, few-shot) can tell blurred real faces from real ones, its own
    baseline; a judge that cannot (few-shot at 48-64 px: 0.59) says nothing about a generator."""
    out: dict[str, Any] = {}
    for which, key in (("full", "expr_judge_auc_blurred_real"), ("few_shot", "expr_judge_auc_blurred_real_few_shot")):
        name, value = f"expr_judge_{which}_informative", judge.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            out[name], out[f"{name}_reason"] = False, f"{key} is unavailable: no baseline to read it against"
        elif value < JUDGE_BLUR_FLOOR:
            out[name] = False
            out[f"{name}_reason"] = (f"{key} = {value:.3f} < {JUDGE_BLUR_FLOOR}: this judge cannot tell blurred real "
                                     "faces from real ones, so its reading of translations is not informative")
            log.warning("evaluate_expression: %s", out[f"{name}_reason"])
        else:
            out[name] = True
    return out


def _diversity(cfg: Config, split: ExpressionSplit, translator: ExpressionTranslator, rows: np.ndarray,
               targets: np.ndarray, translated: torch.Tensor) -> dict[str, Any]:
    seed = cfg.evaluate.seed
    rng = np.random.default_rng(seed)
    real = [to_model_input(split.test_images[rng.permutation(np.flatnonzero(split.test_labels == c))[:DIVERSITY_DRAWS]])
            for c in range(split.n_labels)]
    across_inputs = [translated[np.flatnonzero(targets == c)[:DIVERSITY_DRAWS]] for c in range(split.n_labels)]
    out: dict[str, Any] = {"expr_diversity_within_label_real": m.within_label_msssim(real),
                           "expr_diversity_translations_within_label": m.within_label_msssim(across_inputs),
                           "expr_diversity_draws": DIVERSITY_DRAWS}
    if translator.latent_dim:
        out["expr_diversity_within_label"] = m.within_label_msssim(
            [translator.sample(np.full(DIVERSITY_DRAWS, c), seed=seed + 100 + c) for c in range(split.n_labels)])
    else:
        out.update(expr_diversity_within_label="unavailable",
                   expr_diversity_within_label_reason=f"{translator.kind} has no latent z: one output per "
                   "(input, label); see expr_diversity_translations_within_label")
    return out


def _per_label_outputs(split: ExpressionSplit, translator: ExpressionTranslator, seed: int, k: int) -> list[torch.Tensor]:
    """k outputs per label: G(z, label) for latent models, else translations of k test faces."""
    if translator.latent_dim:
        return [translator.sample(np.full(k, c), seed=seed + 200 + c) for c in range(split.n_labels)]
    pick = np.random.default_rng(seed).permutation(len(split.test_labels))[:k]
    return [translator.translate(split.test_images[pick], np.full(len(pick), c)) for c in range(split.n_labels)]
