"""Blur and ringing kernels of Real-ESRGAN's degradation model (Wang et al. 2021, §3.1), made for a whole batch, and
the per-image filtering that applies them.

Every kernel of a batch lies on one odd `grid`×`grid` square (the largest kernel size), zero outside its own size,
so that one grouped convolution filters the batch with a different kernel for each image.

With C = (x, y) the pixel offset from the centre and Σ = R(θ)·diag(σx², σy²)·R(θ)ᵀ, Q = Cᵀ Σ⁻¹ C:
- Gaussian: exp(-Q/2); generalized Gaussian: exp(-Q^β / 2); plateau: 1 / (1 + Q^β). "iso" kernels have σx = σy.
- sinc (the ideal circular low-pass of cutoff ω rad/pixel, truncated): ω·J1(ω·r) / (2π·r), and ω²/(4π) at r = 0.
Each kernel is normalised to sum to 1.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Shapes of the blur kernels, as numbered in the per-image draws.
GAUSSIAN, GENERALIZED, PLATEAU = 0, 1, 2


def offsets(grid: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The x and y offsets from the centre of a `grid`×`grid` square (float64, grid×grid each)."""
    if grid < 1 or grid % 2 == 0:
        raise ValueError(f"the kernel grid must be a positive odd size, got {grid}")
    ax = torch.arange(grid, dtype=torch.float64, device=device) - grid // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return x, y


def _inside(sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """B×grid×grid: whether each cell is within its kernel's own (odd) size."""
    x, y = offsets(grid, sizes.device)
    half = (sizes.to(torch.float64)[:, None, None] - 1) / 2
    return (x.abs() <= half) & (y.abs() <= half)


def _normalised(k: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    k = torch.where(inside, k, torch.zeros_like(k))
    return (k / k.sum(dim=(1, 2), keepdim=True)).float()


def blur_kernels(shape: torch.Tensor, sigma: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor,
                 sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """B kernels (B×grid×grid float32): `shape` (GAUSSIAN, GENERALIZED or PLATEAU), `sigma` B×2 (σx, σy),
    `theta` the rotation, `beta` the shape exponent (unused by GAUSSIAN), `sizes` each kernel's odd side."""
    x, y = offsets(grid, sigma.device)
    s = sigma.to(torch.float64)
    c, n = torch.cos(theta.to(torch.float64))[:, None, None], torch.sin(theta.to(torch.float64))[:, None, None]
    u = c * x + n * y  # the offset along the kernel's first axis, then its second
    v = -n * x + c * y
    q = (u / s[:, 0, None, None]) ** 2 + (v / s[:, 1, None, None]) ** 2
    b = beta.to(torch.float64)[:, None, None]
    kinds = shape[:, None, None]
    k = torch.where(kinds == GAUSSIAN, torch.exp(-q / 2),
                    torch.where(kinds == GENERALIZED, torch.exp(-(q**b) / 2), 1 / (1 + q**b)))
    return _normalised(k, _inside(sizes, grid))


def sinc_kernels(omega: torch.Tensor, sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """B circular low-pass (ringing) kernels of cutoff `omega` rad/pixel (0 < ω ≤ π), B×grid×grid float32."""
    x, y = offsets(grid, omega.device)
    r = torch.sqrt(x**2 + y**2)
    w = omega.to(torch.float64)[:, None, None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = torch.where(r > 0, w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r), w**2 / (4 * math.pi))
    return _normalised(k, _inside(sizes, grid))


def identity_kernels(batch: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """B kernels that leave an image as it is."""
    k = torch.zeros(batch, grid, grid, device=device)
    k[:, grid // 2, grid // 2] = 1
    return k


def pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Mirror padding (the image continues as its reflection); images too small to mirror repeat their edges."""
    if p == 0:
        return x
    return F.pad(x, (p, p, p, p), mode="reflect" if p < min(x.shape[-2:]) else "replicate")


def filter_each(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image of B×C×H×W filtered by its own kernel (B×k×k, odd k), every channel alike; same size out."""
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    if kernels.shape != (b, k, k) or k % 2 == 0:
        raise ValueError(f"need {b} odd square kernels, got {tuple(kernels.shape)}")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)[:, None]  # (B·C)×1×k×k, one group per channel
    out = F.conv2d(pad(x, k // 2).reshape(1, b * c, h + k - 1, w + k - 1), weight, groups=b * c)
    return out.view(b, c, h, w)


def gaussian_1d(size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """A normalised 1-D Gaussian of odd `size` (float32)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def separable_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """B×C×H×W filtered by the 1-D `kernel` along both axes (mirror padding), same size out."""
    c, k = x.shape[1], kernel.numel()
    w = kernel.to(x.dtype).view(1, 1, 1, k).expand(c, 1, 1, k)
    padded = pad(x, k // 2)
    return F.conv2d(F.conv2d(padded, w, groups=c), w.transpose(-1, -2), groups=c)


# Real-ESRGAN's sharpened targets: OpenCV's Gaussian for a 51-pixel window (σ = 0.3·(51/2 - 1) + 0.8 = 8), half the
# high-pass added back, only where it exceeds 10 levels (a softened mask, so flat areas keep their noise-free look).
USM_SIZE, USM_SIGMA, USM_WEIGHT, USM_THRESHOLD = 51, 8.0, 0.5, 10 / 255


def unsharp_mask(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W in [0, 1] → sharpened by unsharp masking, clipped to [0, 1] (Real-ESRGAN's `--sharpen-gt` targets)."""
    kernel = gaussian_1d(USM_SIZE, USM_SIGMA, x.device)
    residual = x - separable_blur(x, kernel)
    mask = separable_blur((residual.abs() > USM_THRESHOLD).to(x.dtype), kernel)
    sharp = (x + USM_WEIGHT * residual).clamp(0, 1)
    return mask * sharp + (1 - mask) * x
