"""Data: bundled sample images (and, later, Grain sources and transforms)."""
