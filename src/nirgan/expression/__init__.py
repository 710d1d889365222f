"""The expression family: the source papers' emotion GANs (StarGAN, cGAN, cGAN + encoder), which
translate a grey face to another expression. Everything only this family uses is here; it builds
on the neutral core (config, io, devices, the shared training loop, checkpoints, fingerprints,
DDP plumbing, the realism judge) and imports nothing of the NIR family, and no module outside
this package imports it, so a StarGAN edit reruns no NIR stage (tests/test_structure.py).

    data.py        the prepared split (images.npy rows, labels)
    sources.py     collect's labelled-face sources: the expression twin, label folders, FER2013
    twin.py        the expression twin: the NIR twin's subjects filmed with expressions
    models/        one file per network (cgan, cgan_encoder, stargan, the auditor, the classifier)
    losses.py      the papers' losses, pure functions
    step.py        one iteration's losses for each model (pure)
    session.py     ExpressionSession: networks, optimisers, RNGs, one iteration, the whole state
    trainer.py     train_expression(): the run's setup around nirgan.training.loop
    artifacts.py   expression_generator.pt
    measures.py, audit.py, figures.py   what evaluate_expression measures and draws
    stages/        the family's pipeline stages (pipelines/expression/dvc.yaml)
"""
