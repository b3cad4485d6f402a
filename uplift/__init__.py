"""uplift package."""
