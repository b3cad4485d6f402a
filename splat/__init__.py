"""splat package."""
