"""The expression-translation networks (second model family), one file per network, each citing
the paper section it follows:

    cgan.CGANGenerator, cgan.CGANDiscriminator   Milan cGAN (emotion-cgan-paper.txt, section 7)
    cgan_encoder.LatentEncoder                   KTH encoder E (emotion-dcgan-encoder-paper.txt, 2.2.2)
    stargan.StarGANGenerator, StarGANDiscriminator  Imperial StarGAN (emotion-dataset-stargan-report.txt,
                                                 chapter 8; Choi et al. 2018, appendix A)
    translator.ExpressionTranslator              the one interface evaluation uses for all three

All are pure ``nn.Module`` s; their training lives in :mod:`nirgan.expression.trainer`.
"""
