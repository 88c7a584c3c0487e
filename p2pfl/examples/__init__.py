"""Ready-made learner entry points for demos, rehearsals and tests."""
