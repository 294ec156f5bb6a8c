"""VisNet (Flipkart, "Deep Learning based Large Scale Visual Recommendation and Search for E-Commerce").

A deep branch (a pretrained CNN, frozen or partly trained) sees the whole image; two shallow
convolutional branches see 4x and 8x downsampled copies of the same input and keep the coarse
spatial layout (silhouette, outline, colour blobs) that the deep pooled features throw away.
The three L2-normalised parts are concatenated and projected by a Linear layer to an
L2-normalised embedding (512-d by default).

Input convention everywhere (training and serving): float tensors in [0, 1], [B, 3, S, S] with
S = image_size, produced by `preprocess_image`. The model normalises internally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ml.imaging import pad_to_square
from ml.models.backbones import available_backbones, create_backbone

DEEP_BACKBONES = available_backbones()


@dataclass
class VisNetConfig:
    """The model section of a training config; the defaults are the shipped recipe (configs/visnet.yaml)."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 128  # model input side; shallow branches see image_size / factor
    deep_size: int = 64  # the deep branch input side (the input is resized inside the model)
    embedding_dim: int = 512
    shallow: bool = True
    shallow_factors: tuple[int, ...] = (4, 8)
    shallow_channels: int = 24  # "resnet": the stem width, doubled by each stride-2 stage
    shallow_depth: int = 1  # 1 = the paper's single conv + max-pool; 2 adds a 3x3 conv
    shallow_grid: int = 4  # spatial grid kept after pooling (flattened, as in the paper)
    shallow_arch: str = "resnet"  # "paper": one big strided conv (+ depth-1 3x3 convs); "cnn" / "resnet": conv stacks
    shallow_grey: bool = True  # feed the shallow branches luminance only (street colours are arbitrary)
    vgg16_weights: str | None = None  # path to torchvision VGG16 weights (required for backbone="vgg16")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, data: dict) -> VisNetConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("shallow_factors", "mean", "std"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("shallow_factors", "mean", "std"):
            data[key] = list(data[key])
        return data


def preprocess_uint8(image: Image.Image, size: int) -> np.ndarray:
    """RGB, padded to a square with the median border colour, resized to size x size: uint8 [S, S, 3]."""
    image = pad_to_square(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """`preprocess_uint8` as float [0, 1] [3, S, S], the model's input."""
    return torch.from_numpy(preprocess_uint8(image, size).copy()).permute(2, 0, 1).float().div_(255.0)


def build_deep_backbone(config: VisNetConfig, pretrained: bool = True) -> tuple[nn.Module, int]:
    """(module mapping [B,3,s,s] normalised images to [B, D] pooled features, D), from the backbone registry."""
    return create_backbone(config.backbone, pretrained=pretrained, weights_path=config.vgg16_weights)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ShallowBranch(nn.Module):
    """Downsample by `factor`, then a few convolutions that keep a small spatial grid, flattened.

    arch "paper": one strided conv (+ optional 3x3 convs) and max-pool, as in the VisNet paper;
    "cnn": a small conv stack; "resnet": a stem then (stride-2 conv + residual block) stages, channels
    doubling, until the grid side is reached - still shallow next to the deep branch, but enough to tell
    one garment from the next same-category one at 32 px."""

    def __init__(
        self,
        factor: int,
        channels: int,
        depth: int,
        grid: int,
        image_size: int,
        arch: str = "paper",
        grey: bool = False,
    ):
        super().__init__()
        self.factor = factor
        self.grey = grey
        self.input_size = max(8, image_size // factor)
        in_ch = 1 if grey else 3
        layers: list[nn.Module]
        if arch == "resnet":
            layers = _conv_bn_relu(in_ch, channels) + _conv_bn_relu(channels, channels)
            width, side = channels, self.input_size
            while side > grid:
                layers += _conv_bn_relu(width, 2 * width, 2) + [_Residual(2 * width)]
                width, side = 2 * width, (side + 1) // 2
            self.body = nn.Sequential(*layers)
            self.grid = grid
            self.out_dim = width * grid * grid
            return
        if arch == "cnn" and factor <= 4:
            c1, c2, c3 = max(8, channels // 4), max(16, channels // 2), channels
            layers = (
                _conv_bn_relu(in_ch, c1) + _conv_bn_relu(c1, c1, 2) + _conv_bn_relu(c1, c2) + _conv_bn_relu(c2, c2, 2)
            )
            for _ in range(max(1, depth - 1)):
                layers += _conv_bn_relu(c2 if _ == 0 else c3, c3)
            self.body = nn.Sequential(*layers)
            self.grid = grid
            self.out_dim = c3 * grid * grid
            return
        if factor <= 4:  # the paper's 8x8 stride-4 conv on the 4x-downsampled copy
            conv = nn.Conv2d(in_ch, channels, kernel_size=8, stride=4, padding=2)
        else:  # the paper's 7x7 stride-2 conv on the 8x-downsampled copy
            conv = nn.Conv2d(in_ch, channels, kernel_size=7, stride=2, padding=3)
        layers = [conv, nn.ReLU(inplace=True)]
        for _ in range(max(0, depth - 1)):
            layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.grid = grid
        self.out_dim = channels * grid * grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size:
            images = F.adaptive_avg_pool2d(images, self.input_size)
        if self.grey:
            images = images.mean(dim=1, keepdim=True)
            # per-image contrast normalisation: street lighting and colours vary, the shop image is grey on white
            images = (images - images.mean(dim=(2, 3), keepdim=True)) / (images.std(dim=(2, 3), keepdim=True) + 0.05)
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.body(images).float()
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1) if x.shape[-1] > 2 * self.grid else x
        x = F.adaptive_max_pool2d(x, self.grid)
        return F.normalize(x.flatten(1), dim=1)


class VisNet(nn.Module):
    deep: Any  # the backbone (a timm model or torchvision's VGG16 up to fc7)
    mean: torch.Tensor
    std: torch.Tensor
    shallow_branches: nn.ModuleList

    def __init__(self, config: VisNetConfig | None = None, pretrained: bool = True, **overrides):
        super().__init__()
        config = config or VisNetConfig()
        if overrides:
            config = VisNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.deep, self.deep_dim = build_deep_backbone(config, pretrained=pretrained)
        branches = [
            ShallowBranch(
                f,
                config.shallow_channels,
                config.shallow_depth,
                config.shallow_grid,
                config.image_size,
                config.shallow_arch,
                config.shallow_grey,
            )
            for f in (config.shallow_factors if config.shallow else ())
        ]
        self.shallow_branches = nn.ModuleList(branches)
        in_dim = self.deep_dim + sum(b.out_dim for b in branches)
        self.projection = nn.Linear(in_dim, config.embedding_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.freeze_deep(True)

    # -- freezing -------------------------------------------------------------------------------
    def freeze_deep(self, frozen: bool = True, train_last_blocks: int = 0) -> None:
        """Freeze the deep branch; with train_last_blocks > 0 the last EfficientNet blocks (+ head) stay trainable."""
        for p in self.deep.parameters():
            p.requires_grad = not frozen
        if frozen and train_last_blocks > 0:
            for module in self.trainable_deep_modules(train_last_blocks):
                for p in module.parameters():
                    p.requires_grad = True

    def trainable_deep_modules(self, last_blocks: int) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if hasattr(self.deep, "blocks"):
            mods += list(self.deep.blocks[-last_blocks:])
            for name in ("conv_head", "bn2"):
                if hasattr(self.deep, name):
                    mods.append(getattr(self.deep, name))
        elif hasattr(self.deep, "classifier"):
            mods.append(self.deep.classifier)
        return mods

    @property
    def deep_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.deep.parameters())

    # -- forward --------------------------------------------------------------------------------
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def deep_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled deep-branch features (unnormalised) for [0,1] images at image_size."""
        x = self.normalise(images)
        if x.shape[-1] != self.config.deep_size:
            x = F.interpolate(
                x,
                size=(self.config.deep_size, self.config.deep_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.deep(x).float()

    def forward_from_deep_features(self, deep_feats: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Embedding from precomputed deep features; `images` ([0,1], any side >= the shallow inputs) feed
        the shallow branches (ignored, may be None, without them)."""
        parts = [F.normalize(deep_feats.float(), dim=1)]
        if len(self.shallow_branches):
            if images is None:
                raise ValueError("the shallow branches need the images")
            x = self.normalise(images.float())
            parts += [branch(x) for branch in self.shallow_branches]
        return F.normalize(self.projection(torch.cat(parts, dim=1)), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_from_deep_features(self.deep_features(images), images)

    # -- artifacts ------------------------------------------------------------------------------
    def trainable_state_dict(self, include_deep: bool | None = None) -> dict[str, torch.Tensor]:
        """The weights to save: everything but the packaged (frozen) deep weights, unless the deep branch
        was (partly) trained, in which case those trained modules are included too."""
        state = self.state_dict()
        if include_deep is None:
            include_deep = False
        trained_deep = {name for name, p in self.deep.named_parameters() if p.requires_grad}
        keep = {}
        for key, value in state.items():
            if key.startswith("deep."):
                sub = key[len("deep.") :]
                module_prefix = sub.rsplit(".", 1)[0]
                in_trained_module = any(t.rsplit(".", 1)[0] == module_prefix for t in trained_deep)
                if include_deep or sub in trained_deep or in_trained_module:
                    keep[key] = value
            else:
                keep[key] = value
        return keep

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved weights (float16 in artifacts; copied into the float32 parameters)."""
        current = self.state_dict()
        state = {k: (v.to(current[k].dtype) if k in current and v.is_floating_point() else v) for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if not k.startswith("deep.")]
        if bad_missing or unexpected:
            raise ValueError(f"weights do not fit VisNet: missing {bad_missing[:5]}, unexpected {unexpected[:5]}")
