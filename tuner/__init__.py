"""deltalab.tuner."""
