"""Builders of the networks and their preprocessing (SAM family, CLIP presets)."""
