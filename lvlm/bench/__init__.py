"""Metrics, the cached and resumable matrix runner, and reports."""
