"""Assembled models: tokenizers (encoder -> quantizer -> decoder), generators, LPIPS, discriminators."""
