"""Data: Grain sources (image folders, ArrayRecord shards, bundled sample crops) and transforms."""
