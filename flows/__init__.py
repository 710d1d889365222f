"""Prefect flows of nirgan. They orchestrate from outside DVC and stay thin: the work is
``dvc repro`` of the stages declared in dvc.yaml, which call ``nirgan stage <name>``."""
