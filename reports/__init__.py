"""deltalab.reports."""
