"""Street-like augmentation of training batches, on the GPU/CPU tensors the model sees ([B, 3, s, s] in [0, 1]):
jitter (shift, scale, rotation, colour gain, contrast, blur, noise) and occluding edge strips."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_small(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Street-like jitter for [B,3,s,s] in [0,1]: small shift/scale/rotation, colour gain, contrast, blur, noise."""
    b = x.shape[0]
    device = x.device
    angle = (torch.rand(b, device=device) - 0.5) * 2 * math.radians(10) * strength
    scale = 1 + (torch.rand(b, device=device) - 0.5) * 0.2 * strength
    shift = (torch.rand(b, 2, device=device) - 0.5) * 0.16 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 1 + (torch.rand(b, 3, 1, 1, device=device) - 0.5) * 0.3 * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, device=device) - 0.5) * 0.4 * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * gain
    if strength > 0:
        blur = torch.rand(b, device=device) < 0.3
        if blur.any():
            x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x + torch.randn_like(x) * 0.02 * strength
    return x.clamp(0, 1)


def occlude_edges(x: torch.Tensor, probability: float, max_fraction: float = 0.35) -> torch.Tensor:
    """Street-like occlusion for [B,3,s,s]: with `probability`, a strip along one random edge (up to
    `max_fraction` of the side) is replaced by the same region of another image in the batch, as the
    benchmark's occluders are patches of background laid over an item's edge."""
    b, _, height, width = x.shape
    if probability <= 0 or b < 2:
        return x
    device = x.device
    hit = torch.rand(b, device=device) < probability
    fraction = 0.1 + torch.rand(b, device=device) * (max_fraction - 0.1)
    edge = torch.randint(0, 4, (b,), device=device)  # left, right, top, bottom
    cols = torch.arange(width, device=device).float().add_(0.5).div_(width)[None, :]
    rows = torch.arange(height, device=device).float().add_(0.5).div_(height)[:, None]
    f = fraction[:, None, None]
    strip = (
        torch.stack(
            [
                cols.expand(height, width),
                1 - cols.expand(height, width),
                rows.expand(height, width),
                1 - rows.expand(height, width),
            ]
        )[edge]
        < f
    )
    mask = (strip & hit[:, None, None])[:, None]
    return torch.where(mask, x.roll(1, dims=0), x)


def augment_pair_batch(
    inputs: torch.Tensor, n_anchors: int, street_anchor: torch.Tensor, occlude: float
) -> torch.Tensor:
    """Augment a batch laid out [anchors; positives(; negatives)] in place and return it: street-crop anchors get
    mild jitter, catalog anchors street-like jitter (and, with probability `occlude`, an occluded edge); the
    shop images after them are only mildly jittered."""
    b = n_anchors
    anchors = inputs[:b]
    inputs[:b] = torch.where(
        street_anchor[:, None, None, None], augment_small(anchors, 0.5), augment_small(anchors, 1.0)
    )
    inputs[:b] = occlude_edges(inputs[:b], occlude)
    inputs[b:] = augment_small(inputs[b:], 0.25)
    return inputs
