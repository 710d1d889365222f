"""Pipeline stages: one module per stage, each with one entry function ``run``."""
