"""Evaluation: reconstruction metrics (PSNR, SSIM, codebook usage here; LPIPS in models.lpips)
and the FID family: `fid` (FID, statistics files), `scores` (Inception Score,
precision/recall), `features` (sharded Inception features), `inception_weights`, `image_sets`,
`generative` (image sets and samples scored) and `rfid` (a tokenizer's rFID and the rest)."""

from jaxtok.eval.metrics import code_counts, psnr, ssim, usage_from_counts

__all__ = ["code_counts", "psnr", "ssim", "usage_from_counts"]
