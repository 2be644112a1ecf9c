"""Experiment configs: `get_config(arg)` files (see jaxtok/config.py)."""
