"""Accelerator kernels, one folder per op; each imports only jax."""
