"""deltalab.harness."""
