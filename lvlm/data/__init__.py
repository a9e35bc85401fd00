"""Dataset loaders (registered under kind "dataset") and synthetic data generators."""
