"""Evaluation metrics for tokenizers (PSNR, SSIM, codebook usage; LPIPS in models.lpips)."""

from jaxtok.eval.metrics import code_counts, psnr, ssim, usage_from_counts

__all__ = ["code_counts", "psnr", "ssim", "usage_from_counts"]
