"""What `boxseg train-primary` is asked, as one frozen value per concern.

The CLI (or a script, or a benchmark) builds a PrimaryOptions once, `validate()` refuses what
cannot work in one line each, and train_primary takes the value whole; config.json records it
(train_primary.run_config). The values that already had this shape (SplitSpec, ModelSpec,
TrainConfig, BoxConstraint, WeakBoxLoss) nest inside; `dataclasses.replace` makes variants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from boxseg.box_constraint import BoxConstraint
from boxseg.box_losses import WeakBoxLoss
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.models import ModelSpec
from boxseg.selfcorr import SELF_CORR_MODES
from boxseg.store import InMemoryLogits


def check_alpha(alpha_start: float, alpha_end: float, decay_fraction: float) -> None:
    """One line for a linear schedule that cannot decay: 0 < end <= start, fraction in (0, 1]."""
    if not 0 < alpha_end <= alpha_start:
        raise BoxsegError(
            f"--alpha-start {alpha_start} / --alpha-end {alpha_end}: "
            "need 0 < alpha-end <= alpha-start"
        )
    if not 0 < decay_fraction <= 1:
        raise BoxsegError(f"--alpha-decay-fraction {decay_fraction}: must be in (0, 1]")


@dataclass(frozen=True)
class CorrectionOptions:
    """How q is refined from the ancillary logits (`--self-corr`): none; linear, alpha decaying
    geometrically from `alpha_start` to `alpha_end` over `alpha_decay_fraction` of training;
    or conv, a merger g of `conv_hidden` channels trained on F alone for `conv_warmup` steps
    first (None: a third of the steps with W). `conv_grad_to_primary` lets F's gradient reach
    the primary net through g; `allow_full_anc` accepts an ancillary net trained on all of F."""

    mode: str = "none"
    alpha_start: float = 30.0
    alpha_end: float = 0.5
    alpha_decay_fraction: float = 0.5
    conv_hidden: int = 128
    conv_warmup: int | None = None
    conv_grad_to_primary: bool = False
    allow_full_anc: bool = False

    def validate(self) -> None:
        if self.mode not in SELF_CORR_MODES:
            raise BoxsegError(f"--self-corr {self.mode}: choose from {', '.join(SELF_CORR_MODES)}")
        check_alpha(self.alpha_start, self.alpha_end, self.alpha_decay_fraction)


@dataclass(frozen=True)
class WeakOptions:
    """Where W's targets come from and how much they weigh: a logits store (`logits`, a
    location or an InMemoryLogits) or the ancillary net at `anc_model` run online (conv takes
    both); neither trains on F alone. `weight` scales the W term, `batch_size` W's images a
    step (None: the F batch size); `constraint` is the box rule for logits this run makes
    itself (a store's own rule applies to its logits); `boxes` adds the box-supervised terms."""

    logits: str | InMemoryLogits | None = None
    anc_model: Path | None = None
    weight: float = 1.0
    batch_size: int | None = None
    constraint: BoxConstraint = field(default_factory=BoxConstraint)
    boxes: WeakBoxLoss = field(default_factory=WeakBoxLoss)

    @property
    def given(self) -> bool:
        """Whether there is a W source at all."""
        return self.logits is not None or self.anc_model is not None

    def validate(self) -> None:
        self.constraint.validate()
        self.boxes.validate()
        if self.boxes.enabled and not self.given:
            raise BoxsegError("--weak-boxes needs W: give --logits or --anc-model")
        if self.weight < 0:
            raise BoxsegError(f"--weak-weight {self.weight}: must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise BoxsegError(f"--weak-batch-size {self.batch_size}: must be at least 1")


@dataclass(frozen=True)
class LossOptions:
    """How both loss terms weigh pixels: `class_weights` (none, median-freq or a file of K
    weights) per class, and `hard_pixels`, the fraction of each term's pixels with the largest
    loss that it averages over (1: every pixel; below, OHEM-style)."""

    class_weights: str = "none"
    hard_pixels: float = 1.0

    def validate(self) -> None:
        if not 0.0 < self.hard_pixels <= 1.0:
            raise BoxsegError(f"--hard-pixels {self.hard_pixels}: must be in (0, 1]")


@dataclass(frozen=True)
class PrimaryOptions:
    """Everything `boxseg train-primary` was asked: the data and run directory, F/W split,
    network (`pretrained`: its backbone's starting weights), training budget, W's source,
    self-correction, loss weighting, the split scored at the end (None: none) and whether bad
    images are left out (`skip_bad`)."""

    data: Path
    out: Path
    split: SplitSpec
    model: ModelSpec
    train: TrainConfig
    weak: WeakOptions = field(default_factory=WeakOptions)
    correction: CorrectionOptions = field(default_factory=CorrectionOptions)
    losses: LossOptions = field(default_factory=LossOptions)
    pretrained: str = "none"
    val_split: str | None = "val"
    skip_bad: bool = False

    @property
    def mode(self) -> str:
        """What the run trains as: the self-correction mode, or f_only without W."""
        return self.correction.mode if self.weak.given else "f_only"

    def validate(self) -> None:
        """One-line errors for option values and combinations that cannot work."""
        self.train.validate()
        self.weak.validate()
        self.correction.validate()
        self.losses.validate()
        weak, mode = self.weak, self.correction.mode
        if mode == "conv" and weak.anc_model is None:
            raise BoxsegError("--self-corr conv needs --anc-model (g learns on F from its logits)")
        if weak.logits is not None and weak.anc_model is not None and mode != "conv":
            raise BoxsegError("give --logits or --anc-model, not both (both only with conv)")
        if weak.anc_model is None and weak.constraint != BoxConstraint():
            raise BoxsegError(
                f"box constraint {weak.constraint.to_dict()}: not used without --anc-model (a "
                "store's targets follow the rule gen-logits wrote them with)"
            )
