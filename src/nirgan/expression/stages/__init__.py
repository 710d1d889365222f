"""The expression pipeline's stages (pipelines/expression/dvc.yaml), one module per stage."""
