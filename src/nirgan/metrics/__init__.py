"""Evaluation measures and the keys of ``metrics/eval.json``.

Convention for figures that depend on random draws (z, picked sources, SWD projections):
``<key>`` is the MEAN over ``evaluate.seeds`` draws and ``<key>_std`` their standard deviation
(population std, 0 for one draw), StarGAN v2's protocol; draw k uses seed ``evaluate.seed + k``.
Figures that do not depend on the draws have no ``_std``. A figure that cannot be computed
is the string ``"unavailable"`` and a ``<name>_reason`` key says why; it never holds a number.
A figure that is mathematically undefined on this data (the precision of a rule that flagged
nothing) is ``null``.

Keys (images on [-1, 1] unless said; "test" = the subject-disjoint test split):

Every realism figure (fid, realism_*) compares two disjoint, equal halves A and B of the test
  pairs, drawn anew in each draw (by whole subjects where the test split holds two or more; see
  :mod:`nirgan.metrics.realism`): A's real targets against G(B's sources, z) for the trained
  generator, against the same for an untrained one (_untrained), and against B's real targets
  (_real_baseline: what a perfect generator would score), each with the same feature net at the
  same set size. So a generator can no longer score more real than real data by the protocol alone.
  realism_set_size             n, the images per set (half the test split, or less by subject)
  realism_halves               "by subject", or "at random (...)" where whole test subjects cannot
                               make two halves of 2 or more pairs (one test subject, say)
  (Before issue 20 item 6 the reference was all test targets, compared with G of those very
  sources, and the baseline train targets the feature net had been trained on.)
Realism, ImageNet (thesis 3.3.1.1; pytorch-fid, see :mod:`nirgan.metrics.fid`)
  fid, fid_std                 A's real targets vs G(B's sources, z), one z per source
  fid_untrained[_std]          same, for an untrained generator (same architecture and init seed)
  fid_real_baseline[_std]      A's real targets vs B's real targets
  fid_weights, fid_weights_sha256, fid_weights_verified   the file looked at (whenever one was
                               found), the first 16 hex digits of its sha256, and whether that
                               begins with the 8 its standard name promises (6726825d): fid is a
                               number only from such a file (:mod:`nirgan.metrics.weights`)
  fid_reason                   only when fid is "unavailable": disabled, no file, a file that is
                               not the reference (corrupt, other or random weights: named, with its
                               hash and the promised one), or one that cannot be loaded
Diversity, ImageNet (thesis 3.3.1.2, eq. 3.8; lpips package, see :mod:`nirgan.metrics.lpips_diversity`)
  lpips, lpips_std             N test sources x M latents, mean pairwise LPIPS, averaged; higher =
                               more diverse; lpips_net, lpips_weights*, lpips_reason as for FID
Realism and diversity, always available (no downloaded weights; :mod:`nirgan.metrics.features`)
  realism_fid_nirfeat[_std|_untrained|_real_baseline]  Frechet distance (pytorch-fid's) on the
                               penultimate features of the pose/gaze estimator trained here on real
                               train targets (not comparable with ImageNet FID): no ImageNet net is
                               available offline, and this one is trained on exactly the domain
  realism_kid_nirfeat[...]     unbiased KID on the same features
  realism_swd_laplacian[...]   ProGAN's sliced Wasserstein distance on Laplacian pyramids (x1e3)
  All on the halves above; the feature net saw none of the test images, reference or baseline.
  With two test subjects the halves are the two subjects, so the real baseline's FD and KID are
  the same in every draw (their _std is 0).
  diversity_msssim[_std]       mean pairwise MS-SSIM over the M latents of each of the N sources;
                               lower = more diverse (AC-GAN)
Attribute preservation, degrees (:mod:`nirgan.metrics.pose`)
  pose_real_<label>_mean / _p90    the estimator's own absolute error on the real test targets
  pose_real_head_mean, pose_real_gaze_mean   mean over head yaw/pitch/roll, over gaze yaw/pitch
  pose_gaze_from                   where the estimator reads gaze: its eye patches, or the face trunk
  pose_gen_<label>_mean / _p90[_std], pose_gen_head_mean, pose_gen_gaze_mean   the estimator on
                               G(y_i, z_i) against the SOURCE labels
  pose_rec_<label>_mean / _p90, pose_rec_head_mean, pose_rec_gaze_mean   the same on
                               G(y_i, E(x_i)), the style of the real test face instead of a
                               drawn z; "unavailable" without E (pose_rec_reason)
Utility, degrees (:mod:`nirgan.metrics.utility`): the evaluate stage's estimator recipe trained
  on generated images only (train-split sources and labels, evaluate.utility_latents z each) and
  tested on the real test targets (TSTR), beside the same recipe on the real train targets (TRTR)
  and on an untrained generator's images; mean over evaluate.utility_seeds with _std
  utility_tstr_head_deg, utility_tstr_gaze_deg, utility_trtr_*, utility_tstr_untrained_*
  utility_tstr_over_trtr_head, utility_tstr_over_trtr_gaze   the ratios; 1 = as good as real data
Realism judge (:mod:`nirgan.metrics.judge`): a real-vs-generated CNN trained from scratch on one
  half and scored on the held-out half (a classifier two-sample test), ROC AUC; 0.5 = no
  difference found, 1 = always told apart; mean over evaluate.judge_seeds with _std
  judge_auc                    real vs the trained generator
  judge_auc_real_vs_real       disjoint real halves: the test's calibration, about 0.5
  judge_auc_blurred_real       real vs real blurred (Gaussian sigma 1.5 px at 128 px)
  judge_auc_untrained          real vs an untrained generator
  <each>_few_shot              the graded companion: the same judge trained on only 2, 4 and 8
                               images per class, held-out AUC averaged; tells generators apart
                               when the full judge gives both AUC 1.0
Identity reconstruction, unseen test subjects (:mod:`nirgan.metrics.identity`)
  identity_l1, identity_l1_random_z   mean |G(y, E(x)) - x| (and with a random z instead of E(x)),
                               pixels on [0, 1]
  identity_cosine, identity_cosine_random_z   identity-embedding cosine of x with the above
  identity_cosine_same_subject_real, identity_cosine_different_subject_real   calibration on
                               real images: same test subject, and test vs other subjects
  identity_net                 which identity network embedded the faces
  identity_instrument_auc      that network's verification ROC AUC on the real test faces: cosine of
                               same-subject pairs against different-subject pairs ("unavailable"
                               with a _reason without both kinds of pair)
  identity_instrument_accuracy, identity_instrument_chance, identity_instrument_holdout_frames
                               its subject accuracy on train frames held out of its training, and
                               chance; "unavailable" (with a _reason) for the training run's own net
  identity_informative         false, with identity_informative_reason, where the instrument's AUC
                               is under 0.9 (identity.INSTRUMENT_AUC_FLOOR): the identity_cosine*
                               figures then do not say whether a face kept its identity
  latent_code_rms_real, latent_code_rms_sampled   root mean square of E(x) over the test faces,
                               and of the style generation draws (z, or L(z)): G is trained on
                               both, so a large gap means sampling feeds G codes unlike the ones
                               identity reconstruction taught it
Cleaning quality on the twin (:mod:`nirgan.metrics.cleaning`): clean_precision, clean_recall,
  clean_iqr_*, clean_misalignment_*, clean_rules_*, clean_recall_<type>, counts.
Bookkeeping: eval_test_pairs, eval_train_pairs, eval_seeds; generator_sha256: the sha256 of the
  generator.pt these figures measured (generate puts them on a dataset's card only when its own
  generator has that hash; also the MLflow tag eval.generator_sha256); baselines_from: where the instrument
  and the figures that do not read the trained generator (utility's trtr and tstr_untrained arms,
  the judge's real_vs_real, blurred_real and untrained arms, the feature check) came from: the
  baselines stage's record (:mod:`nirgan.metrics.baselines`), or "computed by evaluate: <why>".
Wall seconds (not figures: they differ from run to run): evaluate_seconds_<phase> for load,
  baselines, draws, utility, judge, identity, cleaning, figures, and evaluate_seconds_total
  (everything before MLflow logging, whose seconds are in the stage log).

Plot files (``plots/``, for ``dvc plots``): realism_diversity.json [{metric, value, std}],
pose_error.json [{series, attribute, images, mean_deg, p90_deg}], judge_curve.csv (images_per_class,
one held-out AUC column per judge arm), sweep_<attr>.csv
(pair_id, true_deg, estimated_real_deg, estimated_generated_deg) for head_yaw, head_pitch,
gaze_yaw, and the PNGs samples, sweep_<attr>, interpolation, arithmetic.
"""

from __future__ import annotations

import numpy as np


def aggregate_draws(draws: dict[str, list[float]]) -> dict[str, float]:
    """{key: [value per draw]} -> {key: mean, key_std: std} (see the module docstring)."""
    out: dict[str, float] = {}
    for key, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        out[key] = float(arr.mean())
        out[f"{key}_std"] = float(arr.std())
    return out


__all__ = ["aggregate_draws"]
