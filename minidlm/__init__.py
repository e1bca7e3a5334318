"""minidlm: a small masked-diffusion language model (see README.md)."""
