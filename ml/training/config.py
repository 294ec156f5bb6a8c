"""The training config: typed sections whose defaults ARE the shipped recipe (configs/visnet.yaml resolved; the
GPU run that made models/visnet-default differs only by configs/visnet_gpu.yaml).

A config file is YAML with the sections data, model, mining and train; `extends: other.yaml` (relative to the
file) is read first and overridden key by key (nested sections merge; mining.weights is replaced whole).
`load_config` returns the resolved document (a dict, what config.json records); `TrainingConfig.from_dict`
types and checks it (an unknown key is an error, not a silently ignored typo).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ml.models.visnet import VisNetConfig

# recorded in config.json by a training run (see ml.training.loop): accepted when such a file is read back
RUN_FACTS = {"train": {"device_used", "cpu_bf16_used", "autocast_dtype", "deep_lr"}, "": {"model_version", "triplets"}}
REPLACED_WHOLE = ("weights",)  # dict-valued keys that an override replaces instead of merging into


@dataclass
class DataConfig:
    source: str = "street2shop"  # or "synthetic" (ml.training.synthetic, for tests and tiny runs)
    size: str = "full"
    seed: int = 0
    context: float = 0.1  # street crop = ground-truth box grown by this fraction per side
    max_train_queries: int | None = None
    train_pool_extra: int = 0  # extra random train shop items (distractors) besides the positives
    max_val_queries: int | None = None
    test_eval: bool = True
    max_test_queries: int | None = None
    cache_dir: str | None = None  # None: $VAR_DIR/visnet-cache (var/visnet-cache)
    loader_workers: int | None = None  # processes decoding and cropping images for the cache (None: min(CPUs, 16))


def _default_mining_weights() -> dict[str, float]:
    return {"colour_hist": 0.25, "pixels": 1.0, "edges": 1.0, "cnn": 2.0}


@dataclass
class MiningConfig:
    weights: dict[str, float] = field(default_factory=_default_mining_weights)  # BISS scorers in the ensemble
    street_hard_negatives: int = 4
    street_hard_k: int = 20
    street_out_of_class: int = 1
    catalog_anchors: int = 4000
    catalog_positives: int = 1
    catalog_in_class: int = 1
    catalog_out_of_class: int = 1
    remine: bool = False  # re-mine the street hard negatives with the current model after each epoch
    remine_k: int = 10


def _default_mix() -> dict[str, float]:
    return {"street": 1.0, "catalog": 0.05}


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 144
    lr: float = 0.003
    weight_decay: float = 0.0001
    margin: float = 0.2
    mix: dict[str, float] = field(default_factory=_default_mix)  # per epoch, relative to the street triplets
    curriculum_epochs: int = 0  # first epochs: out-of-class / random negatives only
    augment: bool = True
    occlude: float = 0.0  # probability that an anchor gets an edge strip of another image laid over it
    # 0: frozen deep branch with cached features; N / "all": its last N / all blocks are trained, online from
    # the cached preprocessed images; "auto": all on a GPU, 0 on CPUs
    train_last_blocks: int | str = "auto"
    deep_lr_scale: float = 0.1  # learning rate of the trained deep blocks relative to lr
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    time_budget_s: float | None = None
    # an artifact directory to fine-tune from: its "model" section replaces this config's, its weights start the run
    init_from: str | None = None
    max_steps_per_epoch: int | None = None
    cpu_bf16: bool | str = "auto"  # bfloat16 autocast on CPUs that support it (features cache and training steps)
    class_batches: bool = True  # batches drawn from one class at a time
    batch_negatives: bool = True  # every other image in the batch is a negative too (batch-all triplet hinge)
    negatives: str = "all"  # with batch_negatives: "all" active in-batch negatives, or each anchor's "hardest"
    # False: batches of (anchor, positive) pairs only, the other positives in the batch being the negatives
    # (needs batch_negatives); the mined negatives then only pick which pairs are trained
    mined_negatives: bool = False

    def check(self) -> None:
        if not self.mined_negatives and not self.batch_negatives:
            raise ValueError("train.mined_negatives: false needs train.batch_negatives: true")
        if self.negatives not in ("all", "hardest"):
            raise ValueError(f"train.negatives must be 'all' or 'hardest', not {self.negatives!r}")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": VisNetConfig, "mining": MiningConfig, "train": TrainConfig}


def _section(name: str, data: dict | None) -> Any:
    cls = SECTIONS[name]
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known - RUN_FACTS.get(name, set()))
    if unknown:
        raise ValueError(f"unknown {name} setting(s): {', '.join(unknown)} (expected some of {sorted(known)})")
    values = {k: v for k, v in data.items() if k in known}
    return cls.from_dict(values) if cls is VisNetConfig else cls(**values)


@dataclass
class TrainingConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: VisNetConfig = field(default_factory=VisNetConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        unknown = sorted(set(data) - set(SECTIONS) - RUN_FACTS[""])
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)} (expected {sorted(SECTIONS)})")
        return cls(**{name: _section(name, data.get(name)) for name in SECTIONS})

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict | None = None) -> TrainingConfig:
        return cls.from_dict(load_config(path, overrides))

    def to_dict(self) -> dict:
        return {
            "data": asdict(self.data),
            "model": self.model.to_dict(),
            "mining": asdict(self.mining),
            "train": asdict(self.train),
        }


DEFAULTS: dict = TrainingConfig().to_dict()


def merge(base: dict, override: dict | None) -> dict:
    """base with override laid over it: nested dicts merge key by key (except REPLACED_WHOLE keys)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED_WHOLE:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; `extends: other.yaml` (relative to this file) is read first and overridden by this one."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config extends itself: {' -> '.join(str(p) for p in seen + (path,))}")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    parent = data.pop("extends", None)
    if parent:
        data = merge(read_config_file(path.parent / parent, seen + (path,)), data)
    return data


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """The resolved config document: DEFAULTS <- the file (and what it extends) <- overrides."""
    data = read_config_file(Path(path)) if path else {}
    return merge(merge(DEFAULTS, data), overrides or {})
