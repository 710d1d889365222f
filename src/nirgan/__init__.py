"""nirgan: rig renders to realistic, diverse NIR faces."""
__version__ = "0.1.0"
