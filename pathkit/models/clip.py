"""Image-text (CLIP-style) models for zero-shot: CONCH, PLIP, QuiltNet."""
