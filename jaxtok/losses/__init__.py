"""Training losses: reconstruction (L1, L2, LPIPS) and adversarial (GAN, LeCam, schedules)."""

from jaxtok.losses.gan import (
    LeCamEMA,
    adaptive_weight,
    discriminator_loss,
    gan_weight_schedule,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    lecam_init,
    lecam_loss,
    lecam_update,
    loss_part_grads,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from jaxtok.losses.reconstruction import l1_loss, l2_loss, perceptual_loss

__all__ = [
    "LeCamEMA",
    "adaptive_weight",
    "discriminator_loss",
    "gan_weight_schedule",
    "generator_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "l1_loss",
    "l2_loss",
    "lecam_init",
    "lecam_loss",
    "lecam_update",
    "loss_part_grads",
    "non_saturating_d_loss",
    "non_saturating_g_loss",
    "perceptual_loss",
]
