"""The networks of the thesis's CGAN framework (3.4), how a training config assembles them
(:mod:`~nirgan.models.networks`) and the files they live in (:mod:`~nirgan.models.artifacts`).

One file per network, each citing the table it implements; all are pure (their training
loops, where they have one of their own, live in :mod:`nirgan.training`):
    encoder_decoder.EncoderDecoderGenerator   Table 3.4      multinorm.MultinormGenerator   Table 3.5
    patch_discriminator.PatchDiscriminator    Table 3.3      latent_encoder.LatentEncoder   Table 3.6
    style_mapping.StyleMappingNetwork         Table 3.7      vgg19.VGG19Features            3.2.4.2.1
    identity_net.IdentityNet                  thesis 5.2 (NIR identity network)
    pose_estimator.PoseEstimator              thesis 5.2 (pose/gaze estimator)

The package imports nothing itself: the expression family (:mod:`nirgan.expression`) uses the
neutral modules here (``layers``, ``files``, the auxiliary networks) without loading the NIR
generator's, so a NIR network edit never reruns an expression stage. Import each from its module.
"""
