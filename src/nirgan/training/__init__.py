"""Training of the thesis's CGAN framework (3.2, Algorithm 2), one module per job. The loop,
fingerprint, checkpoint, distributed, auxiliary and identity modules are shared by both
families and import neither (the expression family's trainer, session and step are in
:mod:`nirgan.expression`):

    trainer.py      train(): the NIR run's setup, top-down
    loop.py         the loop both families run: budget, meter, non-finite stop, checkpoints, grids
    fingerprint.py  resume by content: the data's and the training step's code's digests
    session.py      TrainSession: networks, optimisers, RNGs, one iteration, the whole state
    core.py         compute_d_loss / compute_g_loss: one iteration's losses, pure functions
    data.py         the training split on the device
    resume.py       the NIR configuration checks and its fingerprint
    auxiliary.py    the pose estimator's training loop (single fits and banks)
    identity.py     the NIR identity net's training loop
    frozen_networks.py  the frozen networks the losses read (trained or reloaded for the run)
    export.py       model files, metrics and the MLflow model at the end of a run
    checkpoint.py   the whole state on disk, atomic, with a ``latest`` pointer
    distributed.py  torchrun / DDP setup, synchronised batch norm (session.py: the step's DDP views)

The package imports nothing itself, so that a module importing one job (evaluate imports
``auxiliary``) does not pull in the others.
"""
