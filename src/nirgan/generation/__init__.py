"""Labelled NIR datasets from a trained generator: the spec's label rows (``spec``), the rig
that renders their sources (``rig``) and the sharded dataset writer (``dataset``)."""
