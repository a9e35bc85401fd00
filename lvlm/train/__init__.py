"""Trainers: domain CLIP, CLIPSeg decoder, SAM mask decoder (each also an `lvlm train ...` command)."""
