"""Selectors (text + candidates -> mask) and prompters (text -> box / point prompts). One file each."""
