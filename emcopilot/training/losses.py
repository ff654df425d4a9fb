"""Losses of Algorithms 5 and 7 (written by hand where the paper defines them).

- Segmentor: binary focal loss (Lin et al. 2017) + soft Jaccard (IoU) loss on sigmoid logits;
  with deep supervision the loss is averaged over the heads.
- Generator: adversarial (BCE on PatchGAN logits) + lambda_L1 * L1 + lambda_SSIM * (1 - SSIM),
  SSIM from torchmetrics (differentiable, Gaussian 11x11, sigma 1.5) on images in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["focal_loss", "soft_jaccard_loss", "segmentation_loss", "ssim_loss"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Mean binary focal loss: -alpha_t (1 - p_t)^gamma log(p_t). ``alpha`` < 0 disables the
    class weighting. ``target`` in {0, 1}, same shape as ``logits``."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = bce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft IoU over the whole batch: 1 - (sum p t + eps) / (sum p + sum t - sum p t + eps)."""
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    union = p.sum() + target.sum() - inter
    return 1.0 - (inter + eps) / (union + eps)


def segmentation_loss(outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor,
                      alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal + Jaccard; a list of outputs (deep supervision) gives the mean over heads."""
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = sum(focal_loss(o, target, alpha, gamma) + soft_jaccard_loss(o, target) for o in outs)
    return total / len(outs)


def ssim_loss(fake01: torch.Tensor, real01: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics, data range 1) of two (N, 1, H, W) batches in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    s = structural_similarity_index_measure(fake01.float(), real01.float(), data_range=1.0)
    return 1.0 - s
