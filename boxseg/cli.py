"""The `boxseg` command: wiring only. Each stage lives in its own module."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from boxseg.config_file import apply_config
from boxseg.errors import BoxsegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Semantic segmentation from a few masks (F) and many bounding boxes (W): "
    "train-anc -> gen-logits -> train-primary -> eval.",
)
_debug = {"on": os.environ.get("BOXSEG_DEBUG") == "1"}

# Options shared by several stages, declared once so every stage spells them the same way.
Data = Annotated[Path, typer.Argument(help="Dataset directory (layout auto-detected).")]
Split = Annotated[str, typer.Option(help="Split that is divided into F and W.")]
NumFull = Annotated[
    int | None, typer.Option(help="F = this many images of the split, drawn with --seed-split.")
]
SplitSeed = Annotated[int, typer.Option(help="Seed of the F/W draw.")]
FullList = Annotated[
    Path | None, typer.Option(help="File listing F's ids (instead of --num-full).")
]
Arch = Annotated[
    str,
    typer.Option(
        help="Network: boxseg (its own DeepLabv3+) or a segmentation_models.pytorch "
        "architecture (deeplabv3plus, unet, fpn, segformer, upernet ...)."
    ),
]
Encoder = Annotated[
    str,
    typer.Option(
        "--encoder",
        "--backbone",
        help="Encoder: --arch boxseg takes resnet18|resnet34|resnet50|resnet101|"
        "mobilenet_v3_large (torchvision); smp architectures any smp encoder (resnet18, "
        "efficientnet-b0, mit_b0, tu-convnext_atto ...).",
    ),
]
OutputStride = Annotated[int, typer.Option(help="Backbone output stride: 8 or 16.")]
Pretrained = Annotated[
    str,
    typer.Option(
        help="Encoder weights: none, imagenet, a torchvision weights name (--arch boxseg) or "
        "another smp weights name of the encoder (ssl, swsl ...), or a local state dict file."
    ),
]
AsppChannels = Annotated[int, typer.Option(help="ASPP output channels.")]
DecoderChannels = Annotated[int, typer.Option(help="Decoder channels.")]
Iters = Annotated[int, typer.Option(help="Training steps.")]
Epochs = Annotated[
    int | None, typer.Option(help="Train for this many epochs over F instead of --iters.")
]
BatchSize = Annotated[int, typer.Option(help="Images per batch (F; W uses the same unless told).")]
Crop = Annotated[int, typer.Option(help="Square training crop, pixels.")]
ScaleMin = Annotated[float, typer.Option(help="Smallest random scale.")]
ScaleMax = Annotated[float, typer.Option(help="Largest random scale.")]
Lr = Annotated[float, typer.Option(help="Base learning rate (poly schedule).")]
Optimizer = Annotated[str, typer.Option(help="sgd (momentum 0.9) or adamw.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay.")]
Seed = Annotated[int, typer.Option(help="Training seed.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]
Amp = Annotated[str, typer.Option(help="Mixed precision: off, bf16 or fp16 (with GradScaler).")]
ChannelsLast = Annotated[bool, typer.Option(help="channels_last memory format (faster on GPUs).")]
Compile = Annotated[bool, typer.Option(help="torch.compile the networks.")]
CheckpointEvery = Annotated[int, typer.Option(help="Save RUN/last.pt every this many steps.")]
Resume = Annotated[bool, typer.Option(help="Continue from RUN/last.pt if it is there.")]
ValSplit = Annotated[str, typer.Option(help="Split scored at the end of training ('' to skip).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or tables.")]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML (or YAML) file of option values; flags given here override it.",
        is_eager=True,
        callback=apply_config,
    ),
]
ClassWeights = Annotated[
    str,
    typer.Option(
        help="Loss weights per class: none, median-freq (SegNet's, counted over F's masks) or a "
        "file of K weights."
    ),
]
BoxConstraintOpt = Annotated[
    bool,
    typer.Option(
        help="Box-consistent ancillary logits: a class that gets boxes only inside its boxes."
    ),
]
BOX_PRIOR = 0.0  # the default smaller-box prior (docs/results.md, the ablation)
BoxPrior = Annotated[
    float,
    typer.Option(
        help="Box constraint: logit bonus for the class of the smallest covering box "
        "(0: the net alone decides overlaps)."
    ),
]
BoxPenalty = Annotated[
    float,
    typer.Option(
        help="Box constraint: the logit penalty of a class no box allows (1e4: never; a few "
        "logits: a confident net, or self-correction, can overrule a missing box)."
    ),
]
BoxUncovered = Annotated[
    str,
    typer.Option(
        help="Box constraint, datasets without a background class: pixels no box covers are "
        "left to the net (net) or given no target (void: a box may be missing there)."
    ),
]
WeakBoxes = Annotated[
    bool,
    typer.Option(
        help="Also learn shapes from W's boxes: BoxInst's projection (tightness) and colour "
        "pairwise terms on W images (their masks are never read)."
    ),
]
WeakBoxWeight = Annotated[
    float, typer.Option(help="--weak-boxes: weight of the box terms (ramped up over 20%).")
]
SkipBad = Annotated[
    bool,
    typer.Option(help="Leave out images with bad files (counted, listed in the run directory)."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _debug["on"] = _debug["on"] or debug


def _split(split: str, num_full: int | None, seed: int, full_list: Path | None):
    from boxseg.data.split import SplitSpec

    return SplitSpec(split, num_full, seed, full_list)


def _train_cfg(args: dict):
    """TrainConfig from a command's arguments (every TrainConfig field the command has)."""
    from dataclasses import fields

    from boxseg.engine import TrainConfig

    return TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args})


def _model_spec(args: dict):
    """ModelSpec from a command's arguments. The architecture name is checked first (smp
    lower-cases it too), before the dataset scan and the run folder, and before the width
    check: `--arch unett --decoder-channels 16` is a typo in --arch, not a width to drop."""
    from boxseg.models import OWN, ModelSpec
    from boxseg.models.smp_net import refuse_unsupported, smp_archs

    arch = args["arch"].lower()
    if arch != OWN:  # torchrun sets WORLD_SIZE: the trainers' processes, before they join
        refuse_unsupported(arch, int(os.environ.get("WORLD_SIZE", "1")))
        if arch not in (archs := smp_archs()):
            raise BoxsegError(
                f"--arch {args['arch']}: unknown (choose {OWN} or one of {', '.join(archs)})"
            )
    _refuse_unused_widths(arch)
    keys = ("output_stride", "aspp_channels", "decoder_channels")
    return ModelSpec(args["encoder"], **{k: args[k] for k in keys}, arch=arch)


def _refuse_unused(uses: dict[str, bool], mode: str) -> None:
    """One line for an option given on the command line that the chosen mode would ignore
    (`uses`: option name -> whether this mode uses it)."""
    click = _click()
    ctx = click.globals.get_current_context()
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    for name, used in uses.items():
        if not used and ctx.get_parameter_source(name) in given:
            raise BoxsegError(f"--{name.replace('_', '-')}: not used {mode}")


def _refuse_unused_widths(arch: str) -> None:
    """The width options only some architectures read: the DeepLab family (boxseg's own and
    smp's) reads --output-stride and --decoder-channels, boxseg's own also --aspp-channels."""
    deeplab = arch in ("boxseg", "deeplabv3plus", "deeplabv3")
    uses = {
        "aspp_channels": arch == "boxseg",
        "decoder_channels": deeplab,
        "output_stride": deeplab,
    }
    _refuse_unused(uses, f"with --arch {arch}")
    # A width from a --config file is asked for as much as one on the command line; ignored,
    # config.json and model.pt would record a width the network never read.
    click = _click()
    ctx = click.globals.get_current_context()
    for name, used in uses.items():
        if not used and ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT_MAP:
            raise BoxsegError(
                f"--{name.replace('_', '-')}: not used with --arch {arch} "
                f"(set in {ctx.params.get('config')})"
            )


def _box_rule(enabled: bool, prior: float, penalty: float, uncovered: str):
    """The box constraint the options ask for (`--box-uncovered` net or void)."""
    from boxseg.box_constraint import BoxConstraint

    if uncovered not in ("net", "void"):
        raise BoxsegError(f"--box-uncovered {uncovered}: choose net or void")
    return BoxConstraint(enabled, prior, penalty, uncovered == "void")


Overwrite = Annotated[
    bool,
    typer.Option(
        help="Start over in a run directory that holds a run (removes only the files a run writes)."
    ),
]


@app.command("train-anc")
def train_anc_cmd(
    data: Data,
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    num_full: NumFull = None,
    seed_split: SplitSeed = 0,
    full_list: FullList = None,
    split: Split = "train",
    box_min_area: Annotated[
        int, typer.Option(help="Smallest component (pixels) that gets a box.")
    ] = 16,
    box_classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated class names that get boxes (default: all but background)."
        ),
    ] = None,
    arch: Arch = "boxseg",
    encoder: Encoder = "resnet50",
    output_stride: OutputStride = 16,
    pretrained: Pretrained = "none",
    aspp_channels: AsppChannels = 256,
    decoder_channels: DecoderChannels = 256,
    iters: Iters = 2000,
    epochs: Epochs = None,
    batch_size: BatchSize = 8,
    crop: Crop = 321,
    scale_min: ScaleMin = 0.5,
    scale_max: ScaleMax = 2.0,
    lr: Lr = 0.01,
    optimizer: Optimizer = "sgd",
    weight_decay: WeightDecay = 1e-4,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = 0,
    amp: Amp = "off",
    channels_last: ChannelsLast = False,
    compile: Compile = False,
    checkpoint_every: CheckpointEvery = 200,
    resume: Resume = False,
    overwrite: Overwrite = False,
    val_split: ValSplit = "val",
    full_fraction: Annotated[
        float,
        typer.Option(help="Train on this fraction of F (0.5 for stage 1 of the conv recipe)."),
    ] = 1.0,
    class_weights: ClassWeights = "median-freq",
    box_resize: Annotated[
        str,
        typer.Option(help="Box tensor to each scale: max (every box survives) or nearest."),
    ] = "max",
    box_direct: Annotated[
        bool, typer.Option(help="Also concatenate the box tensor to the decoder's input.")
    ] = True,
    box_constraint_loss: Annotated[
        bool,
        typer.Option(help="Train on the box-consistent logits (as gen-logits decodes them)."),
    ] = False,
    weak_boxes: WeakBoxes = False,
    weak_box_weight: WeakBoxWeight = 1.0,
    weak_batch_size: Annotated[
        int | None, typer.Option(help="--weak-boxes: W images per step (default --batch-size).")
    ] = None,
    box_noise: Annotated[
        str,
        typer.Option(
            help="Make F's boxes imprecise at every draw, so the net reads W's loose, shifted or "
            "missing boxes as hints: off, a level (shift10, shift25, loose15, missing20, mixed) "
            "or pairs such as shift=0.1,grow=0.1,drop=0.1,flip=0.05 (fractions of the side / "
            "of the boxes)."
        ),
    ] = "off",
    skip_bad: SkipBad = False,
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Train the ancillary net p_anc(y|x,b) on F, with boxes derived from F's masks (and, with
    --weak-boxes, on W's boxes too)."""
    from boxseg.box_losses import WeakBoxLoss
    from boxseg.data.box_noise import parse_box_noise
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.formats import open_dataset
    from boxseg.models import BoxPathSpec
    from boxseg.train_anc import AncOptions, train_anc

    _refuse_unused(
        {"weak_box_weight": weak_boxes, "weak_batch_size": weak_boxes}, "without --weak-boxes"
    )
    classes = None
    if box_classes:
        names = open_dataset(data).class_names
        wanted = [c.strip() for c in box_classes.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise BoxsegError(
                f"--box-classes: unknown class '{unknown[0]}' (classes: {', '.join(names)})"
            )
        classes = tuple(names.index(c) for c in wanted)
    opts = AncOptions(
        data,
        out,
        _split(split, num_full, seed_split, full_list),
        _model_spec(locals()),
        _train_cfg(locals()),
        boxes=BoxSpec(box_min_area, classes),
        pretrained=pretrained,
        box_path=BoxPathSpec(box_resize, box_direct),
        box_noise=parse_box_noise(box_noise),
        full_fraction=full_fraction,
        class_weights=class_weights,
        constraint_loss=box_constraint_loss,
        weak_boxes=WeakBoxLoss(weak_boxes, weak_box_weight),
        weak_batch_size=weak_batch_size,
        val_split=val_split or None,
        skip_bad=skip_bad,
    )
    train_anc(opts, quiet)


@app.command("gen-logits")
def gen_logits_cmd(
    data: Data,
    out: Annotated[str, typer.Option(help="Logits store to write (a .zarr path or store URL).")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="--method anc: an ancillary model.pt from train-anc, or a primary model.pt "
            "(its own logits: self-training targets, no boxes used)."
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="anc (the ancillary net), box (box-fill), grabcut or sam.")
    ] = "anc",
    num_full: NumFull = None,
    seed_split: SplitSeed = 0,
    full_list: FullList = None,
    split: Split = "train",
    stride: Annotated[int, typer.Option(help="Store logits every this many pixels.")] = 4,
    dtype: Annotated[
        str, typer.Option(help="float16, or int8 (8-bit log-probability codes; docs/store.md).")
    ] = "float16",
    confidence: Annotated[
        float, typer.Option(help="box/grabcut: probability of the painted class.")
    ] = 0.9,
    grabcut_iters: Annotated[int, typer.Option(help="grabcut: GrabCut iterations.")] = 5,
    grabcut_margin: Annotated[
        int, typer.Option(help="grabcut: pixels added around each box for GrabCut's rectangle.")
    ] = 0,
    box_min_area: Annotated[
        int, typer.Option(help="box/grabcut: smallest component (pixels) that gets a box.")
    ] = 16,
    sam_checkpoint: Annotated[
        str | None, typer.Option(help="sam: SAM's weights file (segment-anything).")
    ] = None,
    sam_model: Annotated[str, typer.Option(help="sam: vit_b, vit_l or vit_h.")] = "vit_b",
    workers: Annotated[
        int | None,
        typer.Option(
            help="anc: processes reading images and boxes ahead of the net (default: half the "
            "cores, at most 4; 0: none); grabcut: processes (default: every core)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="anc: images per forward pass (lower it if memory is short).")
    ] = 8,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing boxseg store that does not match.")
    ] = False,
    redo: Annotated[
        str | None,
        typer.Option(help="Comma-separated image ids to compute again (a damaged chunk)."),
    ] = None,
    box_constraint: BoxConstraintOpt = True,
    box_prior: BoxPrior = BOX_PRIOR,
    box_penalty: BoxPenalty = 1e4,
    box_uncovered: BoxUncovered = "net",
    device: Device = "auto",
    skip_bad: SkipBad = False,
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Fill the logits store for W: the ancillary net's logits (images + boxes), or box-fill /
    GrabCut pseudo-labels; resumes if killed."""
    from boxseg.box_labels import METHODS
    from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits

    if method not in METHODS:
        raise BoxsegError(f"--method {method}: choose from {', '.join(METHODS)}")
    painted = method in ("box", "grabcut")
    _refuse_unused(
        {
            "model": method == "anc",
            "batch_size": method == "anc",
            "box_constraint": method == "anc",
            "box_prior": method == "anc",
            "box_penalty": method == "anc",
            "box_uncovered": method == "anc",
            "confidence": painted,
            "box_min_area": painted,
            "grabcut_iters": method == "grabcut",
            "grabcut_margin": method == "grabcut",
            "sam_checkpoint": method == "sam",
            "sam_model": method == "sam",
        },
        f"with --method {method}",
    )
    box_method = None
    if method != "anc":
        box_method = BoxMethod(
            method,
            confidence,
            grabcut_iters,
            grabcut_margin,
            box_min_area,
            sam_checkpoint,
            sam_model,
        )
    opts = GenLogitsOptions(
        data,
        out,
        _split(split, num_full, seed_split, full_list),
        model_path=model,
        box_method=box_method,
        stride=stride,
        dtype=dtype,
        batch_size=batch_size,
        constraint=_box_rule(box_constraint, box_prior, box_penalty, box_uncovered),
        workers=workers,
        device=device,
        overwrite=overwrite,
        skip_bad=skip_bad,
        redo=tuple(i.strip() for i in (redo or "").split(",") if i.strip()),
    )
    store = gen_logits(opts, quiet)
    if not quiet:
        print(f"gen-logits: {len(store)} weak images in {out}")


@app.command("train-primary")
def train_primary_cmd(
    data: Data,
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    logits: Annotated[
        str | None,
        typer.Option(
            help="Logits store from gen-logits; without it the primary trains on F alone."
        ),
    ] = None,
    anc_model: Annotated[
        Path | None,
        typer.Option(
            help="Ancillary model.pt run online on each crop (instead of --logits; conv needs it)."
        ),
    ] = None,
    self_corr: Annotated[str, typer.Option(help="none, linear or conv.")] = "none",
    alpha_start: Annotated[
        float, typer.Option(help="Linear self-correction: initial alpha.")
    ] = 30.0,
    alpha_end: Annotated[float, typer.Option(help="Linear self-correction: final alpha.")] = 0.5,
    alpha_decay_fraction: Annotated[
        float,
        typer.Option(
            help="Fraction of training over which alpha decays geometrically, then stays flat."
        ),
    ] = 0.5,
    conv_hidden: Annotated[
        int, typer.Option(help="Conv self-correction: hidden channels of g.")
    ] = 128,
    conv_warmup: Annotated[
        int | None,
        typer.Option(
            help="Conv: steps of stage 2 (primary + g on F only), before the --iters steps "
            "with W; default a third of --iters."
        ),
    ] = None,
    conv_grad_to_primary: Annotated[
        bool, typer.Option(help="Conv: let the F-term gradient reach the primary net through g.")
    ] = False,
    allow_full_anc: Annotated[
        bool,
        typer.Option(
            help="Conv: accept an ancillary net trained on all of F (g then learns little)."
        ),
    ] = False,
    weak_weight: Annotated[float, typer.Option(help="Weight of the W loss term.")] = 1.0,
    weak_batch_size: Annotated[
        int | None,
        typer.Option(
            help="W images per batch (default --batch-size); the W term is weighted per image."
        ),
    ] = None,
    weak_boxes: WeakBoxes = False,
    weak_box_weight: WeakBoxWeight = 1.0,
    class_weights: ClassWeights = "none",
    hard_pixels: Annotated[
        float,
        typer.Option(
            help="Average each loss term over only this fraction of its pixels, those with the "
            "largest loss (OHEM-style bootstrapped cross-entropy; 1: every pixel)."
        ),
    ] = 1.0,
    box_constraint: BoxConstraintOpt = True,
    box_prior: BoxPrior = BOX_PRIOR,
    box_penalty: BoxPenalty = 1e4,
    box_uncovered: BoxUncovered = "net",
    num_full: NumFull = None,
    seed_split: SplitSeed = 0,
    full_list: FullList = None,
    split: Split = "train",
    arch: Arch = "boxseg",
    encoder: Encoder = "resnet50",
    output_stride: OutputStride = 16,
    pretrained: Pretrained = "none",
    aspp_channels: AsppChannels = 256,
    decoder_channels: DecoderChannels = 256,
    iters: Iters = 2000,
    epochs: Epochs = None,
    batch_size: BatchSize = 8,
    crop: Crop = 321,
    scale_min: ScaleMin = 0.5,
    scale_max: ScaleMax = 2.0,
    lr: Lr = 0.01,
    optimizer: Optimizer = "sgd",
    weight_decay: WeightDecay = 1e-4,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = 0,
    amp: Amp = "off",
    channels_last: ChannelsLast = False,
    compile: Compile = False,
    checkpoint_every: CheckpointEvery = 200,
    resume: Resume = False,
    overwrite: Overwrite = False,
    val_split: ValSplit = "val",
    skip_bad: SkipBad = False,
    quiet: Quiet = False,
    config: Config = None,
) -> None:
    """Train the primary net p(y|x) on F (masks) + W (stored ancillary logits, self-corrected)."""
    from boxseg.box_losses import WeakBoxLoss
    from boxseg.primary_options import (
        CorrectionOptions,
        LossOptions,
        PrimaryOptions,
        WeakOptions,
    )
    from boxseg.train_primary import train_primary

    weak = logits is not None or anc_model is not None
    _refuse_unused(
        {
            **dict.fromkeys(
                ("alpha_start", "alpha_end", "alpha_decay_fraction"), self_corr == "linear"
            ),
            **dict.fromkeys(
                ("conv_hidden", "conv_warmup", "conv_grad_to_primary", "allow_full_anc"),
                self_corr == "conv",
            ),
            "weak_weight": weak,
            "weak_batch_size": weak,
            "weak_boxes": weak,
        },
        f"with --self-corr {self_corr}" + ("" if weak else " and no W (--logits or --anc-model)"),
    )
    _refuse_unused({"weak_box_weight": weak_boxes}, "without --weak-boxes")
    online = anc_model is not None  # the rule applies to logits this run makes itself
    _refuse_unused(
        dict.fromkeys(("box_constraint", "box_prior", "box_penalty", "box_uncovered"), online),
        "with --logits alone: the store's own box rule applies (set it when running gen-logits)"
        if logits
        else "without --anc-model",
    )
    opts = PrimaryOptions(
        data,
        out,
        _split(split, num_full, seed_split, full_list),
        _model_spec(locals()),
        _train_cfg(locals()),
        weak=WeakOptions(
            logits=logits,
            anc_model=anc_model,
            weight=weak_weight,
            batch_size=weak_batch_size,
            constraint=_box_rule(box_constraint, box_prior, box_penalty, box_uncovered),
            boxes=WeakBoxLoss(weak_boxes, weak_box_weight),
        ),
        correction=CorrectionOptions(
            mode=self_corr,
            alpha_start=alpha_start,
            alpha_end=alpha_end,
            alpha_decay_fraction=alpha_decay_fraction,
            conv_hidden=conv_hidden,
            conv_warmup=conv_warmup,
            conv_grad_to_primary=conv_grad_to_primary,
            allow_full_anc=allow_full_anc,
        ),
        losses=LossOptions(class_weights=class_weights, hard_pixels=hard_pixels),
        pretrained=pretrained,
        val_split=val_split or None,
        skip_bad=skip_bad,
    )
    train_primary(opts, quiet)


@app.command("eval")
def eval_cmd(
    data: Data,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    model: Annotated[Path | None, typer.Option(help="model.pt to score.")] = None,
    pred_dir: Annotated[
        Path | None, typer.Option(help="Folder of <id>.png class-index predictions.")
    ] = None,
    logits: Annotated[
        str | None,
        typer.Option(help="A logits store: score its pseudo-labels against the split's masks."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the scores as JSON here.")
    ] = None,
    flip: Annotated[bool, typer.Option(help="Test-time augmentation: also the mirror image.")] = (
        False
    ),
    scales: Annotated[
        str, typer.Option(help="Test-time augmentation: image scales, e.g. 0.75,1.0,1.25.")
    ] = "1.0",
    save_pred: Annotated[
        Path | None,
        typer.Option(
            help="Also write <id>.png class-index predictions here (with --logits: "
            "every store image's pseudo-label, box-consistent, 255 void)."
        ),
    ] = None,
    window: Annotated[
        int, typer.Option(help="Run images larger than this in overlapping tiles (0: whole).")
    ] = 0,
    box_constraint: BoxConstraintOpt = True,
    box_prior: BoxPrior = BOX_PRIOR,
    box_penalty: BoxPenalty = 1e4,
    num_full: Annotated[
        int | None,
        typer.Option(help="With the other stages' split options: score only W's images."),
    ] = None,
    seed_split: SplitSeed = 0,
    full_list: FullList = None,
    ranking: Annotated[
        Path | None,
        typer.Option(help="With --logits: only the images of this rank CSV (its first --top)."),
    ] = None,
    top: Annotated[int | None, typer.Option(help="With --ranking: how many of its first.")] = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Score a model, a folder of predictions, or a store's pseudo-labels: mIoU, per-class IoU,
    pixel accuracy."""
    from boxseg.evaluate import EvalOptions, TestTime, run_eval

    on_model = model is not None
    _refuse_unused(
        {
            "flip": on_model,
            "scales": on_model,
            "window": on_model,
            "box_constraint": on_model,
            "box_prior": on_model,
            "device": on_model,
            "box_penalty": on_model,
            "save_pred": pred_dir is None,
            "num_full": pred_dir is None,
            "full_list": pred_dir is None,
            "seed_split": pred_dir is None,
        },
        "with --pred-dir" if pred_dir is not None else "with --logits",
    )
    _refuse_unused({"ranking": logits is not None}, "without --logits")
    _refuse_unused({"top": ranking is not None}, "without --ranking")
    weak_of = None
    if num_full is not None or full_list is not None:
        weak_of = _split(split, num_full, seed_split, full_list)

    try:
        scale_list = tuple(float(x) for x in scales.split(",") if x.strip())
    except ValueError:
        scale_list = ()
    if not scale_list or not all(0.1 <= x <= 4 for x in scale_list):
        raise BoxsegError(f"--scales {scales}: give comma-separated scales between 0.1 and 4")
    from boxseg.box_constraint import BoxConstraint

    rule = BoxConstraint(box_constraint, box_prior, box_penalty)
    only = None
    if ranking is not None:
        from boxseg.rank import read_ranking

        only = tuple(read_ranking(ranking, top))
    opts = EvalOptions(
        data,
        split,
        model_path=model,
        pred_dir=pred_dir,
        logits=logits,
        json_out=json_out,
        save_pred=save_pred,
        test_time=TestTime(scale_list, flip, window, rule),
        device=device,
        weak_of=weak_of,
        only=only,
    )
    run_eval(opts, quiet)


@app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="A primary model.pt.")],
    images: Annotated[Path, typer.Argument(help="An image, or a directory of .png/.jpg images.")],
    out: Annotated[Path, typer.Option(help="Directory for <stem>.png and <stem>_overlay.png.")],
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Predict class-index PNGs and colour overlays for images (into a new directory, or one
    predict made: never beside the inputs)."""
    from boxseg.predict import run_predict

    written = run_predict(model, images, out, device, quiet)
    if not quiet:
        print(f"predict: {len(written)} images written to {out}")


@app.command("split")
def split_cmd(
    data: Data,
    out: Annotated[Path, typer.Option(help="Directory for full.txt, weak.txt, full_half.txt.")],
    num_full: NumFull = None,
    seed_split: SplitSeed = 0,
    split: Split = "train",
) -> None:
    """Write the F and W lists of a split (and the half of F for conv's stage 1)."""
    from boxseg.split_cmd import write_split

    info = write_split(data, _split(split, num_full, seed_split, None), out)
    print(
        f"split: F {info['num_full']} / W {info['num_weak']} images of '{split}' in {out}; "
        f"pass --full-list {Path(out) / 'full.txt'} to every stage"
    )


@app.command("viz")
def viz_cmd(
    data: Data,
    logits: Annotated[str, typer.Option(help="The logits store to look at.")],
    out: Annotated[Path, typer.Option(help="Directory for one <id>.png per image.")],
    ids: Annotated[
        str | None, typer.Option(help="Comma-separated weak image ids (default: the first --num).")
    ] = None,
    num: Annotated[int, typer.Option(help="How many weak images, without --ids.")] = 4,
    ranking: Annotated[
        Path | None,
        typer.Option(help="A rank CSV: its first --num images (instead of the store's first)."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="A primary model.pt: also show its target q.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Linear self-correction alpha for q.")] = 1.0,
    split: Split = "train",
    device: Device = "auto",
) -> None:
    """Pictures of weak images: boxes, pseudo-label, confidence, q, ground truth."""
    from boxseg.viz import run_viz

    _refuse_unused({"alpha": model is not None}, "without --model")
    _refuse_unused({"num": ids is None}, "with --ids")
    if ids and ranking is not None:
        raise BoxsegError("give --ids or --ranking, not both")
    chosen = [i.strip() for i in ids.split(",") if i.strip()] if ids else None
    if ranking is not None:
        from boxseg.rank import read_ranking

        if num < 1:
            raise BoxsegError(f"--num {num}: must be at least 1")
        chosen = read_ranking(ranking, num)
    written = run_viz(data, logits, out, split, chosen, num, model, alpha, device)
    print(f"viz: {len(written)} pictures in {out}")


@app.command("rank")
def rank_cmd(
    data: Data,
    logits: Annotated[str, typer.Option(help="The ancillary logits store of W (gen-logits).")],
    out: Annotated[
        Path, typer.Option(help="CSV to write: one row per W image, most useful first.")
    ] = Path("ranking.csv"),
    model: Annotated[
        Path | None,
        typer.Option(help="A primary model.pt: also rank by its disagreement with the store."),
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="With --list: how many of the first images to add to F.")
    ] = None,
    list_out: Annotated[
        Path | None,
        typer.Option(
            "--list", help="With --top: write F plus the top K images here, a file for --full-list."
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            help="Signal weights, e.g. entropy=1,outside=1,empty=1,disagree=1,"
            "rare=1 (unnamed: 1; 0 leaves one out)."
        ),
    ] = "",
    diversity: Annotated[
        float,
        typer.Option(
            help="0: order by score alone; up to 1: near-duplicates of a chosen image fall back."
        ),
    ] = 1.0,
    split: Split = "train",
    num_full: NumFull = None,
    seed_split: SplitSeed = 0,
    full_list: FullList = None,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --list file.")] = False,
    quiet: Quiet = False,
) -> None:
    """Which W images to mask next: rank them by how much a mask would teach."""
    from boxseg.rank import RankOptions, RankWeights, run_rank

    opts = RankOptions(
        data,
        logits,
        _split(split, num_full, seed_split, full_list),
        out=out,
        model_path=model,
        top=top,
        list_out=list_out,
        weights=RankWeights.parse(weights),
        diversity=diversity,
        device=device,
        overwrite=overwrite,
    )
    rows = run_rank(opts, quiet)
    if not quiet:
        first = ", ".join(r["id"] for r in rows[:3])
        print(
            f"rank: {len(rows)} W images ranked in {out} (first: {first})"
            + (f"; F + top {top} in {list_out}: pass --full-list {list_out}" if top else "")
        )


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="model.pt (primary, or ancillary: two inputs).")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    check: Annotated[
        bool, typer.Option(help="Compare with PyTorch in onnxruntime (when installed).")
    ] = True,
    size: Annotated[
        str, typer.Option(help="Ancillary models: the fixed input size, HEIGHTxWIDTH.")
    ] = "512x512",
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing file boxseg did not export.")
    ] = False,
) -> None:
    """Export a trained model to ONNX (dynamic batch; a primary model any image size)."""
    from boxseg.export import TOLERANCE, export_onnx

    try:
        hw = tuple(int(v) for v in size.lower().split("x"))
    except ValueError:
        hw = ()
    if len(hw) != 2:
        raise BoxsegError(f"--size {size}: give HEIGHTxWIDTH, e.g. 512x512")
    r = export_onnx(model, out, opset, check, hw, overwrite)
    diff = r.get("max_abs_diff")
    checked = (
        f"; onnxruntime matches PyTorch to {diff:.1e} (tolerance {TOLERANCE:g})"
        if diff is not None
        else ""
    )
    fixed = f", fixed size {hw[0]}x{hw[1]}" if r["size"] else ", any image size"
    print(
        f"export: {r['kind']} model to {out} (opset {opset}, inputs "
        f"{', '.join(r['inputs'])}{fixed}){checked}"
    )


@app.command("plot")
def plot_cmd(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories, compared on shared axes.")
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("curves.png"),
    confusion: Annotated[
        Path | None,
        typer.Option(help="An eval --json report: draw its normalised confusion matrix."),
    ] = None,
    smooth: Annotated[int, typer.Option(help="Moving average of the loss over N logs.")] = 1,
) -> None:
    """Training curves (loss, learning rate, val mIoU) of runs, or a confusion matrix."""
    from boxseg.plot import check_plot_out, plot_confusion, plot_runs

    if (confusion is None) == (not runs):
        raise BoxsegError("give run directories, or --confusion EVAL.json (not both)")
    check_plot_out(out)
    if confusion is not None:
        plot_confusion(confusion, out)
    else:
        plot_runs(runs, out, max(1, smooth))
    print(f"plot: wrote {out}")


@app.command("demo")
def demo_cmd(
    out: Annotated[
        Path, typer.Option(help="Directory for the generated data, runs and results.json.")
    ] = Path("boxseg-demo"),
    data_only: Annotated[bool, typer.Option(help="Only generate the dataset.")] = False,
    iters: Annotated[int, typer.Option(help="Training steps of each model.")] = 160,
    data_seed: Annotated[int, typer.Option(help="Seed of the generated dataset.")] = 0,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on a generated dataset and print the results table."""
    from boxseg.demo import run_demo

    run_demo(out, data_only, iters, device, quiet, data_seed)


def _click():
    """The click that typer runs on: its own copy (typer 0.2x vendors it as typer._click), or
    the click package (older typer)."""
    try:
        from typer import _click as click  # noqa: PLC0415
    except ImportError:
        import click
    return click


def main() -> None:
    """Entry point: user mistakes (ours, and the parser's: unknown option, a value of the wrong
    type) print one line and exit 2; --debug shows the traceback."""
    from boxseg import distributed

    click = _click()
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(2)
    except click.exceptions.UsageError as e:
        if _debug["on"]:
            raise
        command = f"{e.ctx.info_name}: " if e.ctx and e.ctx.parent else ""
        print(f"boxseg: error: {command}{one_line_text(e.format_message())}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("boxseg: interrupted", file=sys.stderr)
        sys.exit(130)
    except BoxsegError as e:
        if _debug["on"]:
            raise
        print(f"boxseg: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        distributed.cleanup()


def one_line_text(text: str) -> str:
    return " ".join(text.split())


def one_line(error: BoxsegError) -> str:
    """The message; for an error raised in a DataLoader worker, torch wraps it in a traceback,
    whose last line holds the original message."""
    msg = str(error).strip()
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg
