"""Face detection models (no pipeline policy: that is the detect stage's)."""
