"""Local learning: the Learner seam, the torch implementation and the default models."""
