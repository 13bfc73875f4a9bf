"""`medclf prepare rsna|medmnist|folder|merge`: decode a dataset once into the cache the other commands read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import examples

prepare_app = typer.Typer(
    help="Decode a dataset once into a cache that every other command reads.\n\n"
         "The cache holds uint8 images, a manifest table and cache.json (how it was made).",
    epilog=examples(
        "medclf prepare medmnist --npz pneumoniamnist.npz --out cache/pmnist",
        "medclf prepare rsna --images DIR/stage_2_train_images --labels DIR/stage_2_train_labels.csv "
        "--out cache/rsna256",
    ),
    no_args_is_help=True,
    add_completion=False,
)

def _usable_cores() -> int:
    """What `--workers` defaults to (medclf.data.prepare.default_workers, without importing the decoders)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_OUT = typer.Option(..., "--out", help="Cache directory to create (appears only when complete).")
_SIZE = typer.Option(256, "--size", help="Side of the square cache images (padded to square, never distorted).")
_VAL = typer.Option(0.1, "--val", help="Fraction of patients for validation (per class).")
_TEST = typer.Option(0.1, "--test", help="Fraction of patients for test (per class).")
_SEED = typer.Option(0, "--seed", help="Seed of the patient split.")
_WORKERS = typer.Option(None, "--workers", help="Decoding processes.  [default: every core this process may use, "
                        f"{_usable_cores()} here]")
_NORM = typer.Option("robust", "--norm", help="robust (LUTs + 0.5-99.5 percentile window), deck (divide by "
                     "each image's maximum) or none (keep 8-bit values).")
_SKIP_MISSING = typer.Option(False, "--skip-missing",
                             help="Leave out images/labels that do not match instead of failing.")
_SKIP_BAD = typer.Option(False, "--skip-bad",
                         help="Skip files that cannot be decoded (recorded in cache.json) instead of failing.")
_FORCE = typer.Option(False, "--force", help="Replace an existing cache made from other inputs (only a cache "
                      "medclf made: any other non-empty folder is refused).")
_QUIET = typer.Option(False, "--quiet", help="No progress bar.")
_NAMES = typer.Option(None, "--label-names", help="Comma-separated class (or, multi-label, finding) names in "
                      "label-index order.")
_POSITIVE = typer.Option(None, "--positive", help="Positive class (name or index) for binary metrics.")
_SHARD = typer.Option(None, "--shard", help="i/n: prepare only part i (0..n-1) of the labelled images, e.g. one "
                      "part per machine; join the parts with `medclf prepare merge`.")


def _shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    from medclf.data.shards import parse_shard

    return parse_shard(text) if text else None


def _names(text: Optional[str]) -> Optional[list[str]]:
    return [n.strip() for n in text.split(",")] if text else None


def _interruptible():
    from medclf.cli.common import resume_hint_on_interrupt

    return resume_hint_on_interrupt(lambda: "run the same command again to continue (decoded chunks are kept)")


@prepare_app.command("rsna", epilog=examples(
    "medclf prepare rsna --images DIR/stage_2_train_images --labels DIR/stage_2_train_labels.csv --classes "
    "DIR/stage_2_detailed_class_info.csv --out cache/rsna256",
))
def rsna_cmd(
    images: Path = typer.Option(..., "--images", help="stage_2_train_images folder (<patientId>.dcm)."),
    labels: Path = typer.Option(..., "--labels", help="stage_2_train_labels.csv (patientId, box, Target)."),
    out: Path = _OUT,
    classes: Optional[Path] = typer.Option(None, "--classes",
                                           help="stage_2_detailed_class_info.csv (checked against Target)."),
    label_mode: str = typer.Option("binary", "--label-mode", help="binary (normal/pneumonia) or detailed (3 classes)."),
    size: int = _SIZE, val: float = _VAL, test: float = _TEST, seed: int = _SEED,
    workers: Optional[int] = _WORKERS, norm: str = _NORM, skip_missing: bool = _SKIP_MISSING,
    skip_bad: bool = _SKIP_BAD, force: bool = _FORCE, quiet: bool = _QUIET, shard: Optional[str] = _SHARD,
) -> None:
    """RSNA Pneumonia Detection Challenge files to a cache.

    One label per patient; the boxes are scaled to the cache size.
    """
    from medclf.data.prepare import prepare_rsna

    with _interruptible():
        path = prepare_rsna(images, labels, out, classes=classes, label_mode=label_mode, size=size, val=val,
                            test=test, seed=seed, workers=workers, norm=norm, skip_missing=skip_missing,
                            skip_bad=skip_bad, force=force, progress=not quiet, shard=_shard(shard))
    typer.echo(str(path))


@prepare_app.command("medmnist", epilog=examples(
    "medclf prepare medmnist --npz pneumoniamnist.npz --out cache/pmnist",
    "medclf prepare medmnist --npz chestmnist.npz --out cache/chest64 --size 64",
))
def medmnist_cmd(
    npz: Path = typer.Option(..., "--npz", help="MedMNIST .npz with {train,val,test}_{images,labels} (any subset)."),
    out: Path = _OUT,
    size: Optional[int] = typer.Option(None, "--size", help="Resize to this side [default: keep the native size]."),
    label_names: Optional[str] = _NAMES, positive: Optional[str] = _POSITIVE,
    force: bool = _FORCE, quiet: bool = _QUIET,
) -> None:
    """A MedMNIST .npz file to a cache.

    Keeps the file's own splits (no patient ids: patient_id = id). (N, K) labels (ChestMNIST) make a
    multilabel cache.
    """
    from medclf.data.prepare import prepare_medmnist

    with _interruptible():
        path = prepare_medmnist(npz, out, size=size, label_names=_names(label_names), positive=positive,
                                force=force, progress=not quiet)
    typer.echo(str(path))


@prepare_app.command("folder", epilog=examples(
    "medclf prepare folder --images cxr14/images --labels cxr14/labels.csv --out cache/cxr14   # label: Effusion|Mass",
    "medclf prepare folder --images chexpert/ --labels chexpert/train.csv --out cache/chexpert "
    "--label-columns Atelectasis,Cardiomegaly,Consolidation,Edema,'Pleural Effusion' --uncertain one",
))
def folder_cmd(
    images: Path = typer.Option(..., "--images", help="Folder of PNG/JPEG/DICOM files."),
    labels: Path = typer.Option(..., "--labels", help="CSV path,label[,patient_id]; path relative to --images."),
    out: Path = _OUT,
    size: int = _SIZE, val: float = _VAL, test: float = _TEST, seed: int = _SEED,
    workers: Optional[int] = _WORKERS, norm: str = _NORM,
    label_names: Optional[str] = _NAMES, positive: Optional[str] = _POSITIVE,
    skip_missing: bool = _SKIP_MISSING, skip_bad: bool = _SKIP_BAD, force: bool = _FORCE, quiet: bool = _QUIET,
    shard: Optional[str] = _SHARD,
    allow_outside_images: bool = typer.Option(
        False, "--allow-outside-images",
        help="Read CSV paths that leave --images (../x.png, absolute paths elsewhere, symbolic links inside "
             "--images that lead outside it); refused by default."),
    task: Optional[str] = typer.Option(
        None, "--task", help="binary, multiclass or multilabel  [default: multilabel when a label holds '|' or "
        "--label-columns is given, else by the class count]"),
    label_columns: Optional[str] = typer.Option(
        None, "--label-columns", help="Comma-separated 0/1 columns, one per finding (CheXpert style): a multilabel "
        "set; no label column needed. 1 present, 0/blank absent, -1 uncertain."),
    uncertain: str = typer.Option("zero", "--uncertain", help="With --label-columns, what -1 means: zero (absent, "
                                  "U-Zeros), one (present, U-Ones) or drop (leave the image out)."),
) -> None:
    """A folder of images and a labels CSV to a cache.

    Split by patient like RSNA. Multi-label: labels like 'Effusion|Mass' ('No Finding' or empty for none), or
    --label-columns.
    """
    from medclf.data.prepare import prepare_folder

    with _interruptible():
        path = prepare_folder(images, labels, out, size=size, val=val, test=test, seed=seed, workers=workers,
                              norm=norm, label_names=_names(label_names), positive=positive,
                              skip_missing=skip_missing, skip_bad=skip_bad, force=force, progress=not quiet,
                              shard=_shard(shard), allow_outside_images=allow_outside_images, task=task,
                              label_columns=_names(label_columns), uncertain=uncertain)
    typer.echo(str(path))


@prepare_app.command("merge", epilog=examples(
    "medclf prepare merge cache/rsna.part0 cache/rsna.part1 --out cache/rsna256",
))
def merge_cmd(
    shards: List[Path] = typer.Argument(..., metavar="SHARD",
                                        help="The shard caches written with --shard i/n (all n of them)."),
    out: Path = _OUT,
    force: bool = typer.Option(False, "--force", help="Replace an existing cache at --out."),
    quiet: bool = _QUIET,
) -> None:
    """Join the parts of a sharded prepare into one cache.

    The result is identical to an unsharded prepare's (same content_hash).
    """
    from medclf.data.shards import merge_shards

    typer.echo(str(merge_shards(shards, out, force=force, progress=not quiet)))


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare")
