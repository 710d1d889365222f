"""Generation: labelled NIR datasets from a trained generator and a rig of source renders."""
