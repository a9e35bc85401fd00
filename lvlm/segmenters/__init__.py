"""Prompted segmenters: image + Prompts (boxes / points / text) -> Candidates. One file each."""
