"""Baseline JPEG compression and decompression of a batch, in torch: a degradation, not a file codec.

It does what Pillow does with libjpeg-turbo at `quality=q`, in libjpeg's own integer arithmetic: the IJG tables
scaled by q, JFIF YCbCr in 16-bit fixed point, 4:2:0 chroma (2×2 averages), the "islow" DCT and its inverse, and
the decoder's "fancy" triangular chroma upsampling. With Pillow's libjpeg-turbo the result is bit for bit Pillow's
(tests/test_degradation.py). Each image of the batch has its own quality. Not differentiable: training data is made
under no_grad.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# The example tables of the JPEG standard (ITU-T T.81, Annex K), which libjpeg scales by the quality.
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32),
)


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The luma and chroma tables (B×8×8) of integer qualities 1..100, as libjpeg's `jpeg_set_quality` makes them
    (baseline: clamped to 1..255)."""
    q = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q)[:, None, None]
    out = []
    for base in (_LUMA, _CHROMA):
        table = torch.tensor(base, dtype=torch.float64, device=q.device).view(1, 8, 8)
        out.append(torch.floor((table * scale + 50) / 100).clamp(1, 255).float())
    return out[0], out[1]


# libjpeg's "islow" integer DCT (the Loeffler-Ligtenberg-Moschytz butterflies in 13-bit fixed point, two extra bits
# between the passes): its constants are FIX(x) = round(x · 2^13).
_CONST_BITS, _PASS1_BITS = 13, 2
_F = {name: int(v * (1 << _CONST_BITS) + 0.5) for name, v in (
    ("0298", 0.298631336), ("0390", 0.390180644), ("0541", 0.541196100), ("0765", 0.765366865),
    ("0899", 0.899976223), ("1175", 1.175875602), ("1501", 1.501321110), ("1847", 1.847759065),
    ("1961", 1.961570560), ("2053", 2.053119869), ("2562", 2.562915447), ("3072", 3.072711026))}


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _odd_part(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rotations shared by both DCTs' odd halves (a, b, c, d are the inputs in the order libjpeg names them
    tmp4..tmp7 forward, tmp0..tmp3 inverse)."""
    z1, z2, z3, z4 = a + d, b + c, a + c, b + d
    z5 = (z3 + z4) * _F["1175"]
    z1, z2 = z1 * -_F["0899"], z2 * -_F["2562"]
    z3, z4 = z3 * -_F["1961"] + z5, z4 * -_F["0390"] + z5
    return a * _F["0298"] + z1 + z3, b * _F["2053"] + z2 + z4, c * _F["3072"] + z2 + z3, d * _F["1501"] + z1 + z4


def _fdct_1d(x: torch.Tensor, first: bool) -> torch.Tensor:
    """One pass of libjpeg's forward islow DCT over the last axis (int64, 8 long)."""
    d = x.unbind(-1)
    t0, t7, t1, t6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
    t2, t5, t3, t4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first:
        o0, o4, shift = (t10 + t11) << _PASS1_BITS, (t10 - t11) << _PASS1_BITS, _CONST_BITS - _PASS1_BITS
    else:
        o0, o4, shift = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS), _CONST_BITS + _PASS1_BITS
    z1 = (t12 + t13) * _F["0541"]
    o2, o6 = _descale(z1 + t13 * _F["0765"], shift), _descale(z1 - t12 * _F["1847"], shift)
    o7, o5, o3, o1 = (_descale(v, shift) for v in _odd_part(t4, t5, t6, t7))
    return torch.stack([o0, o1, o2, o3, o4, o5, o6, o7], dim=-1)


def _idct_1d(c: torch.Tensor, first: bool) -> torch.Tensor:
    """One pass of libjpeg's inverse islow DCT over the last axis (int64, 8 long)."""
    k = c.unbind(-1)
    z1 = (k[2] + k[6]) * _F["0541"]
    t2, t3 = z1 - k[6] * _F["1847"], z1 + k[2] * _F["0765"]
    t0, t1 = (k[0] + k[4]) << _CONST_BITS, (k[0] - k[4]) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(k[7], k[5], k[3], k[1])
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
    out = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
    return torch.stack([_descale(v, shift) for v in out], dim=-1)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """B×H×W (multiples of 8) → B×H/8×W/8×8×8."""
    b, h, w = x.shape
    return x.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(x: torch.Tensor) -> torch.Tensor:
    b, nh, nw = x.shape[:3]
    return x.permute(0, 1, 3, 2, 4).reshape(b, nh * 8, nw * 8)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """One 8-bit plane (B×H×W, multiples of 8) through libjpeg's DCT, quantisation (its rounding: halves away from
    zero), dequantisation and inverse DCT, in its integer arithmetic."""
    blocks = _blocks(plane.to(torch.int64) - 128)
    coeffs = _fdct_1d(_fdct_1d(blocks, True).transpose(-1, -2), False).transpose(-1, -2)  # rows, then columns
    divisor = table.to(torch.int64)[:, None, None] * 8  # the DCT's output is 8 times the orthonormal one
    quantised = torch.sign(coeffs) * ((coeffs.abs() + divisor // 2) // divisor)
    restored = quantised * (divisor // 8)
    pixels = _idct_1d(_idct_1d(restored.transpose(-1, -2), True).transpose(-1, -2), False)  # columns, then rows
    return (_unblocks(pixels) + 128).clamp(0, 255).float()


def _downsample(c: torch.Tensor) -> torch.Tensor:
    """libjpeg's 2×2 box average, with its alternating rounding bias (1, 2, 1, 2, ... across a row)."""
    total = F.avg_pool2d(c[:, None], 2)[:, 0] * 4
    bias = 1 + torch.arange(total.shape[-1], device=c.device) % 2
    return torch.floor((total + bias) / 4)


def _upsample(c: torch.Tensor) -> torch.Tensor:
    """libjpeg's "fancy" h2v2 upsampling: a triangle filter, 3/4 of the nearer sample and 1/4 of the next, in integer
    arithmetic with its rounding biases; the edges repeat their last sample."""
    p = F.pad(c[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    mid = p[:, 1:-1]
    rows = torch.stack([3 * mid + p[:, :-2], 3 * mid + p[:, 2:]], dim=2)  # B×h×2×(w+2): upper, lower output rows
    rows = rows.flatten(1, 2)
    centre = rows[..., 1:-1]
    cols = torch.stack([torch.floor((3 * centre + rows[..., :-2] + 8) / 16),
                        torch.floor((3 * centre + rows[..., 2:] + 7) / 16)], dim=-1)
    return cols.flatten(-2)


def jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """B×3×H×W RGB in [0, 1] → the same images JPEG-compressed at `quality` (B integers, 1..100), rounded to 8-bit
    levels as a decoder gives them. Any size: edges are repeated to whole 16×16 blocks, as libjpeg does."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"jpeg needs B×3×H×W images, got {tuple(images.shape)}")
    b, _, h, w = images.shape
    x = (images.float().clamp(0, 1) * 255).round().to(torch.int64)
    x = F.pad(x.float(), (0, -w % 16, 0, -h % 16), mode="replicate").to(torch.int64)
    y, cb, cr = _to_ycc(x)
    luma_t, chroma_t = quant_tables(quality.to(images.device))
    y = _code_plane(y, luma_t)
    # The decoder upsamples the chroma of the image itself, repeating its last row and column at the edges.
    ch, cw = (h + 1) // 2, (w + 1) // 2
    cb = _upsample(_code_plane(_downsample(cb), chroma_t)[:, :ch, :cw])
    cr = _upsample(_code_plane(_downsample(cr), chroma_t)[:, :ch, :cw])
    return _to_rgb(y[:, :h, :w], cb[:, :h, :w], cr[:, :h, :w]).float() / 255


def _fix(v: float) -> int:
    return int(v * 65536 + 0.5)


def _to_ycc(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """libjpeg's RGB → YCbCr, in its 16-bit fixed point (B×3×H×W int64 → three B×H×W float planes)."""
    r, g, b = x.unbind(1)
    half, offset = 1 << 15, 128 << 16
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> 16
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> 16
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> 16
    return y.float(), cb.float(), cr.float()


def _to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """libjpeg's YCbCr → RGB, in its fixed point, clamped to 0..255 (three B×H×W planes → B×3×H×W int64)."""
    y, cb, cr = y.to(torch.int64), cb.to(torch.int64) - 128, cr.to(torch.int64) - 128
    half = 1 << 15
    r = y + ((_fix(1.402) * cr + half) >> 16)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> 16)
    b = y + ((_fix(1.772) * cb + half) >> 16)
    return torch.stack([r, g, b], dim=1).clamp(0, 255)
