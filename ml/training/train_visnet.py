"""Train VisNet on the street-to-shop benchmark (the command line; the loop is ml.training.loop).

    python -m ml.training.train_visnet --config configs/visnet.yaml [--size small|full] [--out DIR]
        [--approved-triplets FILE] [--triplets FILE] [--triplets-out FILE] [--epochs N] [--quiet]
        [--plus-approved FILE] [--init-from ARTIFACT_DIR]

--plus-approved trains the approved rows of a reviewed file every epoch ON TOP of the mined triplets (a retrain:
"approved triplets plus the base data"; rows whose images the benchmark lacks or holds out for evaluation are
skipped and counted), where --approved-triplets trains on them alone. --init-from fine-tunes a trained artifact
(its architecture replaces the config's) and evaluates it beside the new model on the same splits.

Frozen deep branch: its pooled features for every image involved (shop items and street crops) are computed
once and cached on disk (var/visnet-cache/), together with the small copies the shallow branches see; training
then only runs the shallow branches and the projection, which takes minutes on 2 CPU cores. On a GPU
(train.train_last_blocks: auto or N) the deep branch's blocks are trained too: the cache then keeps the
preprocessed images (uint8, on the GPU) and every step runs the whole model over them, in bfloat16.

Artifact (--out, see ml.artifacts): weights.pt (VisNet weights minus the packaged backbone, plus its trained
blocks), config.json (the resolved config), metrics.json, data_hash, model_version, training_curves.png. The
mined triplets go to --triplets-out when asked.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ml.training.config import load_config
from ml.training.loop import ROOT, train
from ml.triplets import MinedTriplet, load_triplets, save_triplets

__all__ = ["build_parser", "load_config", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train VisNet on the street-to-shop benchmark")
    parser.add_argument("--config", default=str(ROOT / "configs" / "visnet.yaml"))
    parser.add_argument("--size", default=None, help="benchmark size (overrides data.size)")
    parser.add_argument("--out", default=None, help="artifact directory (default models/<model_version-ish>)")
    parser.add_argument(
        "--approved-triplets", default=None, help="JSONL of reviewed triplets: train on approved rows only"
    )
    parser.add_argument("--triplets", default=None, help="JSONL of triplets: train on all its rows")
    parser.add_argument("--triplets-out", default=None, help="also write the mined triplets to this JSONL")
    parser.add_argument(
        "--plus-approved", default=None, help="JSONL of reviewed triplets: its approved rows train on top of the mined"
    )
    parser.add_argument("--init-from", default=None, help="artifact directory to fine-tune (sets train.init_from)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    return parser


def _given_triplets(args: argparse.Namespace) -> tuple[list[MinedTriplet] | None, str]:
    if args.approved_triplets:
        triplets = load_triplets(args.approved_triplets, approved_only=True)
        if not triplets:
            raise SystemExit(f"{args.approved_triplets}: no approved triplets")
        return triplets, f"approved:{args.approved_triplets}"
    if args.triplets:
        return load_triplets(args.triplets), f"file:{args.triplets}"
    return None, "mined"


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides: dict = {}
    if args.size:
        overrides.setdefault("data", {})["size"] = args.size
    if args.epochs:
        overrides.setdefault("train", {})["epochs"] = args.epochs
    if args.init_from:
        overrides.setdefault("train", {})["init_from"] = str(Path(args.init_from).resolve())
    config = load_config(args.config, overrides)
    triplets, source = _given_triplets(args)
    out = args.out or str(ROOT / "models" / f"visnet-{Path(args.config).stem}")
    curated = load_triplets(args.plus_approved, approved_only=True) if args.plus_approved else None
    result = train(
        config,
        out,
        triplets=triplets,
        triplets_source=source,
        progress=not args.quiet,
        curated=curated,
        curated_source=f"approved:{args.plus_approved}" if curated is not None else "curated",
    )
    if args.triplets_out:
        save_triplets(result["triplets"], args.triplets_out)
        print(f"wrote {len(result['triplets'])} triplets to {args.triplets_out}", flush=True)
    print(
        json.dumps(
            {
                "model_version": result["model_version"],
                "out": str(out),
                "final": result["metrics"]["final"],
                "timings": result["metrics"]["timings"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
