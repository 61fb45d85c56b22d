"""Fused Triton kernels, installed as `remn.kernels`."""
