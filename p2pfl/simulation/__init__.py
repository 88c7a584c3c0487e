"""Many nodes on one machine: experiment config, setup, simulator, reference loop."""
