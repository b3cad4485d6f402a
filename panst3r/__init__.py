"""panst3r package."""
