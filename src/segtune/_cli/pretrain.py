"""`segtune pretrain`: self-supervised and contrastive pretraining, and Noise2Noise denoisers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segtune._cli.common import UsageError, stop_on_ctrl_c


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a U-Net without (many) labels, or train a denoiser",
        description=(
            "Pretrain a U-Net for label-efficient fine-tuning. restore: learn to undo pixel "
            "drop, blur, Sobel filtering and noise (SSIM loss); simclr: global contrastive "
            "stage (NT-Xent on two augmented views); local-contrastive: supervised contrastive "
            "stage on labelled pixels, started --from a simclr folder; n2n: a Noise2Noise "
            "denoiser trained on adjacent z-slices (L2). The first three write a segmentation "
            "model to fine-tune with 'segtune train --from MODEL_DIR'; n2n writes a denoiser "
            "(--denoise-out applies it to the inputs)."
        ),
    )
    parser.add_argument(
        "--images", nargs="+", required=True, metavar="PATH", help="images (every time point is one image)"
    )
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    parser.add_argument(
        "--method",
        required=True,
        choices=("restore", "simclr", "local-contrastive", "n2n"),
        help="restore (undo corruptions), simclr (contrast views of whole patches), "
        "local-contrastive (contrast labelled blocks), n2n (Noise2Noise denoising)",
    )
    parser.add_argument(
        "--from",
        dest="from_model",
        default=None,
        metavar="MODEL_DIR",
        help="start from this model's encoder (local-contrastive: the simclr stage's folder)",
    )
    parser.add_argument(
        "--labels", nargs="+", default=None, metavar="PATH", help="label files, one per image (local-contrastive)"
    )
    parser.add_argument(
        "--ignore-value", type=int, default=None, metavar="V", help="label value to ignore (local-contrastive)"
    )
    parser.add_argument(
        "--channel", type=int, default=None, metavar="C", help="use this channel of multi-channel images"
    )
    parser.add_argument("--epochs", type=int, default=20, metavar="N", help="epochs")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        metavar="N",
        help="steps per epoch (default: cover the pixels once)",
    )
    parser.add_argument("--patch", type=int, default=128, metavar="N", help="square patch size")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="patches per step")
    parser.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="AdamW learning rate")
    parser.add_argument(
        "--head",
        default=None,
        choices=("binary", "three_class", "semantic"),
        help="segmentation head of the saved model (default: the --from model's, else three_class)",
    )
    parser.add_argument("--classes", type=int, default=None, metavar="N", help="number of classes of a semantic head")
    parser.add_argument(
        "--architecture",
        choices=("unet", "unetpp"),
        default="unet",
        help="network (unet; unetpp: restore and n2n only)",
    )
    parser.add_argument(
        "--encoder",
        choices=("resnet18", "resnet34", "resnet50"),
        default=None,
        help="a U-Net with this ResNet encoder (restore and n2n only; --depth does not apply)",
    )
    parser.add_argument("--depth", type=int, default=4, metavar="N", help="U-Net depth")
    parser.add_argument("--base-channels", type=int, default=32, metavar="N", help="U-Net width of the first level")
    parser.add_argument(
        "--corruptions",
        default="drop,blur,sobel,noise",
        metavar="LIST",
        help="restore: comma-separated corruptions from drop, blur, sobel, noise",
    )
    parser.add_argument(
        "--corruption-mode",
        default="one",
        choices=("one", "all"),
        help="restore: one corruption per image at random, or all of them in order",
    )
    parser.add_argument(
        "--drop-fraction", type=float, default=0.25, metavar="F", help="restore: fraction of pixels dropped"
    )
    parser.add_argument("--restore-loss", default="ssim", choices=("ssim", "ssim+l1"), help="restore: loss")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="contrastive temperature (simclr 0.5, local-contrastive 0.07)",
    )
    parser.add_argument("--block-size", type=int, default=16, metavar="N", help="local-contrastive: block side")
    parser.add_argument(
        "--freeze-encoder", action="store_true", help="local-contrastive: keep the global stage's encoder fixed"
    )
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument(
        "--stretch", action="store_true", help="percentile contrast stretch 5-98 %% (clipped) instead of 1-99.8 %%"
    )
    norm.add_argument(
        "--normalize", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="normalisation percentiles"
    )
    parser.add_argument(
        "--denoise-out", default=None, metavar="DIR", help="n2n: write the denoised inputs here (NAME_denoised.tif)"
    )
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M", help="stop after this many minutes")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where to train; auto tries CUDA, then MPS, then the CPU",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random numbers (patches, corruptions, views)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segtune.core.normalize import STRETCH_PERCENTILES
    from segtune.core.progress import tqdm_progress
    from segtune.core.train.pretrain import PretrainConfig, pretrain_files

    if args.method == "local-contrastive" and not args.labels:
        raise UsageError("--method local-contrastive needs --labels (one label file per image)")
    if args.labels and args.method != "local-contrastive":
        raise UsageError(f"--labels is only used by --method local-contrastive, not {args.method}")
    if args.denoise_out and args.method != "n2n":
        raise UsageError("--denoise-out goes with --method n2n")
    normalization, clip = (1.0, 99.8), False
    if args.stretch:
        normalization, clip = STRETCH_PERCENTILES, True
    elif args.normalize:
        normalization = tuple(args.normalize)
    config = PretrainConfig(
        method=args.method,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        patch=args.patch,
        learning_rate=args.lr,
        normalization=normalization,
        clip=clip,
        head=args.head,
        n_classes=args.classes,
        architecture=args.architecture,
        encoder=args.encoder,
        depth=args.depth,
        base_channels=args.base_channels,
        corruptions=tuple(c.strip() for c in args.corruptions.split(",") if c.strip()),
        corruption_mode=args.corruption_mode,
        drop_fraction=args.drop_fraction,
        restore_loss=args.restore_loss,
        temperature=args.temperature,
        block_size=args.block_size,
        freeze_encoder=args.freeze_encoder,
        max_minutes=args.max_minutes,
        device=args.device,
        seed=args.seed,
    )
    if args.denoise_out and not args.overwrite:
        _check_denoise_targets(args.images, Path(args.denoise_out))
    command = args.command_line
    with stop_on_ctrl_c("pretrain") as token, tqdm_progress("pretrain", file=sys.stderr, mininterval=1.0) as progress:
        result = pretrain_files(
            args.images,
            config,
            label_paths=args.labels,
            channel=args.channel,
            out=args.out,
            from_model=args.from_model,
            overwrite=args.overwrite,
            ignore_value=args.ignore_value,
            command=command,
            progress=progress,
            cancel=token,
        )
    last = result.history[-1]["loss"] if result.history else float("nan")
    print(
        f"{args.method} pretraining {result.stop_reason} after {len(result.history)} epoch(s), "
        f"final loss {last:.4g} -> {args.out}"
    )
    if result.stop_reason == "cancelled":
        print(
            f"cancelled: {args.out} holds the model of the last finished epoch"
            if result.history
            else "cancelled before the first epoch ended"
        )
        return 130
    if args.method != "n2n":
        print(f"fine-tune it with: segtune train --from {args.out} --images ... --labels ... --out MODEL_DIR")
    elif args.denoise_out:
        written = _denoise_inputs(
            result.model, result.config, args.images, Path(args.denoise_out), args.channel, args.device, args.overwrite
        )
        print(f"denoised {len(written)} image(s) -> {args.denoise_out}")
    return 0


def _check_denoise_targets(paths, folder: Path) -> None:
    from segtune.core.io import output_name

    for path in paths:
        target = folder / output_name(path, suffix="_denoised")
        if target.exists():
            raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")


def _denoise_inputs(model, config, paths, folder: Path, channel, device, overwrite) -> list[Path]:
    """Denoise every input (all planes, the channel(s) the denoiser takes) into float32 OME-TIFFs."""
    import io

    import numpy as np
    import tifffile

    from segtune.core.files import atomic_write_bytes, check_output, ome_metadata
    from segtune.core.io import open_image, output_name
    from segtune.core.train.pretext import denoise

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        image = open_image(path)
        data = np.asarray(image.data.compute())  # TCZYX
        if channel is not None:
            data = data[:, channel : channel + 1]
        # (T, C, Z, Y, X) -> planes with the channel axis third from last, as denoise() takes them
        planes = np.moveaxis(data, 1, 2)
        out = denoise(model, planes, config=config, device=device)
        out = np.moveaxis(out, 2, 1)
        metadata = ome_metadata("TCZYX", image.physical_pixel_sizes)
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, out.astype(np.float32), ome=True, metadata=metadata)
        target = check_output(folder / output_name(path, suffix="_denoised"), overwrite)
        atomic_write_bytes(target, buffer.getvalue(), overwrite=overwrite)
        written.append(target)
    return written
