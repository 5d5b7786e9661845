"""`segtune train`: train or fine-tune a model on images and labels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segtune._cli.common import UsageError, image_files, stop_on_ctrl_c


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on images and labels",
        description=(
            "Train a U-Net from scratch or fine-tune one (--from) on image files and their label "
            "files (binary masks or instance labels), paired in sorted order; a folder stands for "
            "the image files in it. The model folder (--out) is loadable at every moment: it holds "
            "the best model so far, a training_log.csv and a checkpoint/ that --resume continues. "
            "Ctrl-C stops after the current step and keeps the best model."
        ),
    )
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="PATH",
        help="label files or folders, one per image (not with --method cyclegan)",
    )
    parser.add_argument(
        "--method",
        choices=("supervised", "vox2vox", "cyclegan"),
        default="supervised",
        help="supervised (the loss against the labels); vox2vox: a 3D U-Net with a PatchGAN critic, "
        "adversarial + Dice/BCE (3D, labels); cyclegan: no labels at all, a 3D CycleGAN between "
        "the unlabelled stacks and synthetic masks drawn by --mask-recipe (the image->mask "
        "generator becomes the model). GAN methods train 3D U-Nets on --patch Z Y X (default 16 64 64)",
    )
    (
        parser.add_argument(
            "--mask-recipe",
            default="diameter=14,z_anisotropy=2",
            metavar="NAME=VALUE,...",
            help="cyclegan: synthetic nuclei masks, as arguments of segtune.core.synthetic.synthetic_nuclei "
            "(diameter in XY pixels, z_anisotropy = Z step / XY pixel size, touching, eccentricity, ...)",
        ),
    )
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model folder to write")
    parser.add_argument(
        "--from", dest="start", metavar="M", default=None, help="fine-tune this bundled model or model folder"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="training time: stops when spent, keeping the best model (default: 2 minutes when "
        "fine-tuning with --from, 15 for a new model; with --resume the whole run's, the time already "
        "trained included, by default the run's own)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=10_000,
        metavar="N",
        help="at most this many epochs (the time budget usually ends training first)",
    )
    parser.add_argument(
        "--patch",
        type=int,
        nargs="+",
        default=None,
        help="patch size, one number or one per axis (default: about five object diameters, 128-256 px in 2D)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="patches per step (default: 8 for patches up to 160 px, else 4; 2 in 3D)",
    )
    parser.add_argument(
        "--loss",
        default="bce+dice",
        help="losses joined by '+': bce, ce, dice, iou, focal, ssim, mae (e.g. ssim+dice, 0.5*bce+dice)",
    )
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default=None,
        help="sgd (Nesterov momentum; the default when fine-tuning: steps follow the corrections) "
        "or adamw (the default for a new model)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 3e-3 when fine-tuning, with SGD; 2e-3 for a new model, with AdamW)",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "plateau", "none"),
        default="cosine",
        help="learning rate: cosine (short warm-up, then annealed over --max-minutes or the epochs), "
        "plateau (halved when validation stalls for 3 epochs) or none (constant)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="images (or area of a single image) held out for validation"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping after this many epochs without improvement (0: never; the time budget stops training)",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="default: enough patches to cover the images once (at least 16)",
    )
    parser.add_argument(
        "--head",
        choices=("three_class", "binary", "semantic", "multilabel"),
        default=None,
        help="three_class (background/interior/boundary, separates touching objects; default for new models), "
        "binary, semantic (label values are classes), or multilabel (non-exclusive classes, "
        "bit k of a label value is class k: e.g. nuclei 1, Golgi 2); default: the --from model's",
    )
    parser.add_argument("--classes", type=int, default=None, help="number of classes of a semantic or multilabel head")
    parser.add_argument(
        "--3d",
        dest="spatial_dims",
        action="store_const",
        const=3,
        default=2,
        help="a 3D model trained on 3D patches (default: a 2D model; a 3D --from model needs --3d)",
    )
    parser.add_argument(
        "--diameter",
        type=float,
        default=None,
        help="rescale images so objects are this many pixels across (measured from the labels); "
        "prediction rescales new images the same way. Large objects train much faster at ~24-32",
    )
    parser.add_argument("--scale", type=float, default=None, help="a fixed resize factor instead of --diameter")
    parser.add_argument(
        "--normalize",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="percentiles mapped to 0 and 1 (default 1 99.8, or the --from model's)",
    )
    parser.add_argument(
        "--contrast-stretch",
        action="store_true",
        help="normalise by the 5-98 percentiles and clip (the seeds' stretch)",
    )
    parser.add_argument(
        "--architecture",
        choices=("unet", "unetpp"),
        default="unet",
        help="network of a new model: U-Net, or UNet++ (nested skip paths, depth 4)",
    )
    parser.add_argument(
        "--encoder",
        choices=("resnet18", "resnet34", "resnet50"),
        default=None,
        help="a U-Net with this ResNet encoder (random weights, or from segtune pretrain --encoder; "
        "--depth does not apply, --base-channels sets the decoder: 16 gives 256-128-64-32-16)",
    )
    parser.add_argument("--base-channels", type=int, default=16, help="width of the first U-Net level (new models)")
    parser.add_argument("--depth", type=int, default=4, help="number of 2x downsamplings (new models)")
    parser.add_argument(
        "--norm",
        choices=("batch", "group", "instance", "none"),
        default="batch",
        help="normalisation layer after each convolution (new models)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="channel dropout probability in the lower half of the encoder (new models; default: 0, none)",
    )
    parser.add_argument(
        "--upsample",
        choices=("transpose", "resize"),
        default="transpose",
        help="decoder upsampling: transposed convolution or resize + convolution (new models)",
    )
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument(
        "--min-foreground", type=float, default=0.03, help="skip crops with less labelled foreground than this"
    )
    parser.add_argument(
        "--ignore-value", type=int, default=None, help="label value whose pixels the loss ignores (e.g. 255)"
    )
    parser.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    parser.add_argument(
        "--keep-worse",
        action="store_true",
        help="keep the fine-tuned model even when it scores below the starting model on the held-out data "
        "(by default the starting model is kept then, and the run says so)",
    )
    parser.add_argument(
        "--replay",
        type=float,
        metavar="SHARE",
        default=0.0,
        help="when fine-tuning a bundled 2D model (or one fine-tuned from it): the share of patches taken from "
        "the general training crops it ships, e.g. 0.5 (default 0: off)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted training in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random numbers (patches, augmentation, validation split)"
    )
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from segtune.core.train.augment import AugmentConfig
    from segtune.core.train.trainer import TrainConfig

    normalization = tuple(args.normalize) if args.normalize else None
    clip = False
    if args.contrast_stretch:
        if args.normalize:
            raise ValueError("give --normalize or --contrast-stretch, not both")
        normalization, clip = (5.0, 98.0), True
    patch = None if args.patch is None else args.patch[0] if len(args.patch) == 1 else tuple(args.patch)
    minutes = args.max_minutes
    if minutes is None and not args.resume:  # a resumed run keeps its own budget
        minutes = 2.0 if args.start else 15.0
    return TrainConfig(
        spatial_dims=args.spatial_dims,
        head=args.head,
        n_classes=args.classes,
        patch=patch,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        loss=args.loss,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        schedule=args.schedule,
        val_fraction=args.val_fraction,
        patience=args.patience or None,
        min_foreground=args.min_foreground,
        normalization=normalization,
        clip=clip,
        object_diameter=args.diameter,
        scale=args.scale,
        augmentation=AugmentConfig.none() if args.no_augment else AugmentConfig(),
        architecture=args.architecture,
        encoder=args.encoder,
        depth=args.depth,
        base_channels=args.base_channels,
        norm=args.norm,
        dropout=args.dropout,
        upsample=args.upsample,
        freeze_encoder=args.freeze_encoder,
        keep_if_worse=not args.keep_worse,
        replay=args.replay,
        max_minutes=minutes,
        device=args.device,
        amp=not args.no_amp,
        seed=args.seed,
        ignore_value=args.ignore_value,
    )


def run(args: argparse.Namespace) -> int:
    from segtune.core.progress import tqdm_progress
    from segtune.core.train.trainer import train_files

    if args.method != "supervised":
        return _run_gan(args)
    if not args.labels:
        raise ValueError("--labels is required (one label file per image), except with --method cyclegan")
    images = image_files(args.images, "--images")
    labels = image_files(args.labels, "--labels")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image file(s) but {len(labels)} label file(s); give one label file per image")
    config = _config(args)
    config.validate()
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ValueError("give --resume or --overwrite, not both")

    with stop_on_ctrl_c("train") as token:
        try:
            with tqdm_progress("train", file=sys.stderr, mininterval=1.0) as progress:
                result = train_files(
                    images,
                    labels,
                    config,
                    out=out,
                    model=args.start,
                    overwrite=args.overwrite,
                    resume=args.resume,
                    command=args.command_line,
                    progress=progress,
                    cancel=token,
                )
        except FloatingPointError as e:  # training diverged: the user's settings, not a bug
            raise UsageError(f"{out}: {e}") from e
    from segtune.core.train.ddp import launch_rank
    from segtune.core.train.trainer import held_out_summary

    if launch_rank() != 0:  # under torchrun every process trains; rank 0 wrote the folder and speaks
        return 130 if result.stop_reason == "cancelled" else 0
    print(f"{result.stop_reason}: {len(result.history)} epoch(s), best epoch {result.best_epoch}")
    print(held_out_summary(result))
    print(f"model: {out} (log: {out / 'training_log.csv'})")
    return 130 if result.stop_reason == "cancelled" else 0


def _run_gan(args: argparse.Namespace) -> int:
    """``--method vox2vox|cyclegan``: adversarial 3D training (segtune.core.train.gan)."""
    from segtune.core.io import read_labels
    from segtune.core.progress import tqdm_progress
    from segtune.core.train.gan import GanConfig, parse_mask_recipe, train_gan
    from segtune.core.train.pretrain import read_images

    if args.method == "cyclegan" and args.labels:
        raise ValueError(
            "--method cyclegan trains without labels: leave out --labels (the masks come from --mask-recipe)"
        )
    if args.method == "vox2vox" and not args.labels:
        raise ValueError("--method vox2vox needs --labels, one label stack per image")
    if args.start or args.resume:
        raise ValueError(f"--method {args.method} trains new networks: --from and --resume are not available")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"model folder {out} already exists; pass --overwrite to replace it")
    image_paths = image_files(args.images, "--images")
    images, names = read_images(image_paths)
    labels = None
    if args.labels:
        label_files = image_files(args.labels, "--labels")
        if len(label_files) != len(images):
            raise ValueError(
                f"{len(images)} image stack(s) but {len(label_files)} label file(s); give one label file per image"
            )
        labels = [read_labels(path) for path in label_files]
    # the GAN methods' own defaults where the option was left at "auto"; time is the knob here too
    patch = tuple(args.patch) if args.patch and len(args.patch) == 3 else (16, 64, 64)
    config = GanConfig(
        method=args.method,
        patch=patch,
        batch_size=args.batch_size or 2,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch or 20,
        learning_rate=args.lr or 2e-4,
        depth=args.depth,
        base_channels=args.base_channels,
        norm=args.norm,
        mask_recipe=parse_mask_recipe(args.mask_recipe),
        max_minutes=args.max_minutes if args.max_minutes is not None else 15.0,
        normalization=tuple(args.normalize) if args.normalize else (1.0, 99.8),
        device=args.device,
        seed=args.seed,
    )
    config.validate()
    with stop_on_ctrl_c("train") as token, tqdm_progress(args.method, file=sys.stderr, mininterval=1.0) as progress:
        result = train_gan(
            images,
            labels,
            config,
            names=names,
            out=out,
            overwrite=args.overwrite,
            provenance={"command": args.command_line},
            progress=progress,
            cancel=token,
        )
    last = result.history[-1] if result.history else {}
    print(
        f"{args.method} {result.stop_reason}: {len(result.history)} epoch(s)"
        + (f", generator loss {last['generator']:.3f}, critic loss {last['critic']:.3f}" if last else "")
    )
    print(f"model: {out}")
    return 130 if result.stop_reason == "cancelled" else 0
