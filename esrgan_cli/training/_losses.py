"""The training losses, apart from the loop that weighs and steps them: the relativistic average GAN pair (Wang et
al. 2018, eq. 1-2), the perceptual term, and the levels term."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from esrgan_cli.eval.distance import UnitFeatures, unit_distance
from esrgan_cli.model.vgg import VGGFeatures, perceptual_loss


def generator_gan_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_G^Ra from the discriminator's logits on HR (`real`, detached: C(x_r) carries no gradient to G) and SR
    images. The original ESRGAN code averages the two relativistic terms; λ = 5e-3 was tuned with that."""
    return (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0)) / 2


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D^Ra: both scores carry gradient to D; the caller detaches only the generated image."""
    return (_bce(real - fake.mean(), 1.0) + _bce(fake - real.mean(), 0.0)) / 2


def perceptual_term(vgg: VGGFeatures, distance: UnitFeatures | None, sr: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """ESRGAN's L1 of VGG features, or with --perceptual-loss distance the eval's unit-normalised distance (the
    target's features need no gradient)."""
    if distance is None:
        return perceptual_loss(vgg, sr, target)
    with torch.no_grad():
        wanted = distance(target)
    return unit_distance(distance(sr), wanted)


def flat_patches(iteration: int, like: torch.Tensor) -> torch.Tensor:
    """Flat black, white and gray LR patches shaped like `like`'s: the levels term's inputs. Real-world training
    never shows a model noise-free flat black (its noise is clipped at 0), and it learns to lift it by a few levels.
    The gray is a pure function of the iteration (golden-ratio steps), so a resumed run repeats it."""
    gray = (iteration * 0.6180339887498949) % 1.0
    levels = torch.tensor([0.0, 1.0, gray], device=like.device, dtype=like.dtype)
    return levels.view(3, 1, 1, 1).expand(3, *like.shape[1:]).contiguous()


def levels_error(out: torch.Tensor, flats: torch.Tensor) -> torch.Tensor:
    """L1 between the centre of each flat patch's output and its level. The border is left out: there the model's
    zero padding shapes the output, which the engine's reflected edge padding keeps away from images."""
    h, w = out.shape[-2:]
    centre = out[..., h // 4: h - h // 4, w // 4: w - w // 4]
    return (centre - flats[:, :1, :1, :1]).abs().mean()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
