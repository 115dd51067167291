"""`boxseg rank`: which weak images to mask next.

Each W image gets signals of how much a mask for it would teach, read from what boxseg already
holds: the ancillary store (its logits and the boxes gen-logits saw), F's masks (which classes
F lacks) and, with `--model`, the primary net.

- `entropy`: mean normalised entropy of the box-consistent pseudo-label's probabilities over
  the image: where the ancillary net is unsure. Outside every box the constraint leaves one
  class where the dataset has a background class, so there it is the uncertainty inside the
  boxes weighted by their area (a mean over box pixels alone ranked small-box images first and
  lost to random on the objects set: benchmarks/rank_bench.py --stage signals).
- `outside`: the probability mass the ancillary net puts, before the box constraint, on
  classes the boxes forbid at that pixel (mean over the image): where it disagrees with the
  boxes, so the constraint had to overrule it.
- `empty`: how much of its boxes the pseudo-label leaves to other classes, beyond what is
  usual for the box's class (thin poles fill little of their boxes, cars most): per box,
  max(0, fill the class has in the median W box - this box's fill), averaged over the boxes.
- `disagree` (with `--model`): the share of pixels where the primary net's argmax differs from
  the pseudo-label's: the disagreement self-correction works on.
- `rare`: the mean class weight (median-frequency weights over F's masks, class_weights.py;
  a class F lacks weighs `LACKING` times F's rarest class: `rarity_weights`) over what the
  image holds (`holds`: its boxes' areas; for classes without boxes, the pseudo-label outside
  the boxes): images of classes F has little of, or none.

Signals are on different scales, so each becomes its percentile among the W images, and the
score is their weighted mean (`RankWeights`). Diversity: the order is chosen greedily, each
next image the one with the highest score * (1 - diversity * exp(-d / tau)), d its distance to
the nearest image already chosen in the pseudo-labels' coarse layout (class probabilities
pooled to a 4x4 grid: frames of one scene look alike there), tau a quarter of the median
pairwise distance (most pairs are distinct scenes): near-duplicates of a chosen frame fall
back, distinct scenes keep their score (at the median distance, 98% of it).

The ranking is deterministic (no random draw; ties go to the earlier W image).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.checkpoint import load_model
from boxseg.class_weights import class_pixel_counts, median_frequency
from boxseg.data.formats import SegDataset, open_dataset
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.data.validate import check_sizes
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.inference import predict_batch
from boxseg.io import atomic_write_bytes, read_text
from boxseg.metrics import class_map
from boxseg.outputs import output_file
from boxseg.passes import forward_passes
from boxseg.store import LogitsStore

SIGNALS = ("entropy", "outside", "empty", "disagree", "rare")
HEADER = ("rank", "id", "score", "gain", *SIGNALS, "boxes", "classes")
LAYOUT_GRID = 4  # the diversity feature: class probabilities pooled to 4 x 4 cells
TAU_FRACTION = 0.25  # tau: this fraction of the median pairwise layout distance
CLASS_SHARE = 0.01  # the CSV lists a class that holds (`holds`) at least 1% of the image
LACKING = 2.0  # `rare`: a class F's masks lack weighs this many times F's rarest class


@dataclass(frozen=True)
class RankWeights:
    """Weights of the signals in the score (0 leaves one out)."""

    entropy: float = 1.0
    outside: float = 1.0
    empty: float = 1.0
    disagree: float = 1.0
    rare: float = 1.0

    @staticmethod
    def parse(text: str) -> RankWeights:
        """From 'entropy=1,rare=0.5' (signals not named keep their default)."""
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, _, value = part.partition("=")
            if name.strip() not in SIGNALS:
                raise BoxsegError(
                    f"--weights {text}: unknown signal '{name.strip()}'; choose "
                    f"from {', '.join(SIGNALS)}"
                )
            try:
                values[name.strip()] = float(value)
            except ValueError:
                raise BoxsegError(f"--weights {text}: '{part}' is not name=number") from None
        weights = RankWeights(**values)
        if any(not math.isfinite(w) or w < 0 for w in weights.as_dict().values()):
            raise BoxsegError(f"--weights {text}: weights must be finite and >= 0")
        if not any(weights.as_dict().values()):
            raise BoxsegError(f"--weights {text}: at least one weight must be above 0")
        return weights

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass
class ImageSignals:
    """What one W image contributes to the ranking (before the percentiles)."""

    values: dict[str, float | None]  # the signals; None where they cannot be computed
    fills: list[tuple[int, float]]  # (class, share of the box its class fills) per box
    layout: torch.Tensor  # K * 4 * 4 pooled class probabilities (diversity)
    classes: list[str]  # classes holding >= 1% of the image (`holds`), largest first
    boxes: int


def box_rects(ev: BoxEvidence) -> tuple[torch.Tensor, torch.Tensor]:
    """B x 4 int64 pixel bounds (x1, y1, x2, y2; [x1, x2) x [y1, y2), clamped to the image, so
    a box covering no pixel is empty) and B labels of the boxes of a whole image that count
    (`pixel_boxes`): the pixels and the boxes the box constraint uses (`BoxEvidence.extents`)."""
    real = ev.labels[0] >= 0
    h, w = ev.rows.shape[1], ev.cols.shape[1]
    x1, y1, x2, y2 = ev.bounds[0][real].long().unbind(1)
    x1, y1 = x1.clamp(0, w), y1.clamp(0, h)
    x2, y2 = torch.maximum(x2.clamp(0, w), x1), torch.maximum(y2.clamp(0, h), y1)
    return torch.stack([x1, y1, x2, y2], 1), ev.labels[0][real]


def summed_area(mask: torch.Tensor) -> torch.Tensor:
    """(H + 1) x (W + 1) int64 summed-area table of an H x W mask: entry (y, x) counts the set
    pixels above and left of it, so any box's count is four look-ups (`rect_sums`)."""
    h, w = mask.shape
    table = torch.zeros(h + 1, w + 1, dtype=torch.int64)
    torch.cumsum(mask.to(torch.int64).cumsum(0), 1, out=table[1:, 1:])
    return table


def rect_sums(table: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """B int64: the set pixels of `summed_area`'s mask in each of the B x 4 `box_rects`."""
    x1, y1, x2, y2 = rects.unbind(1)
    return table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]


def box_cover(rects: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """H x W bool: the pixels some of the B x 4 `box_rects` cover. Each box adds +1 / -1 at its
    corners to a difference table whose 2-D running sum counts the boxes over each pixel: one
    plane for all the boxes, never one per box."""
    x1, y1, x2, y2 = rects.unbind(1)
    diff = torch.zeros(h + 1, w + 1, dtype=torch.int64)
    ones = torch.ones_like(x1)
    for rows, cols, sign in ((y1, x1, 1), (y1, x2, -1), (y2, x1, -1), (y2, x2, 1)):
        diff.index_put_((rows, cols), ones * sign, accumulate=True)
    return diff.cumsum(0).cumsum(1)[:h, :w] > 0


def box_fills(
    pred: torch.Tensor, valid: torch.Tensor, rects: torch.Tensor, labels: torch.Tensor
) -> list[tuple[int, float]]:
    """(class, fill) of each box with a valid pixel: the share of its valid pixels whose
    pseudo-label is the box's class. Counted from summed-area tables (one of the valid pixels,
    one per box class of its pixels), so memory grows with the pixels, not pixels x boxes."""
    area = rect_sums(summed_area(valid), rects)
    hits = torch.zeros_like(area)
    for c in labels.unique().tolist():
        of_class = labels == c
        hits[of_class] = rect_sums(summed_area((pred == c) & valid), rects[of_class])
    fill = hits.float() / area.float()  # float32, as the fills always were
    return [(int(c), float(f)) for c, f, a in zip(labels, fill, area, strict=True) if a > 0]


def image_signals(
    store: LogitsStore,
    i: int,
    class_weights: torch.Tensor,
    primary_logits: torch.Tensor | None = None,
) -> ImageSignals:
    """The signals of store image i (see the module docstring); `primary_logits`: the primary
    net's K x H x W logits for it (None: no `disagree`). Whole-image tensor operations, with
    per-box statistics from summed-area tables: memory grows with pixels plus boxes, never
    pixels x boxes (a loop over the boxes' classes, none over pixels or boxes)."""
    raw = store.read_full(i, constrained=False)
    k, h, w = raw.shape
    boxes, stored_labels = store.read_boxes(i)
    ev = BoxEvidence.whole([boxes], [stored_labels], h, w)
    bias = store.rule.bias(ev)[0] if store.rule is not None else None
    valid = ~torch.isnan(raw).any(0)
    if bias is not None:  # the rule's void pixels (`void_uncovered`) are no target either
        valid &= ~torch.isnan(bias).any(0)
        bias = bias.nan_to_num(0.0)
    validf = valid.float()
    n_valid = max(float(validf.sum()), 1.0)
    raw = raw.nan_to_num(0.0)
    rects, labels = box_rects(ev)  # the boxes that count (`pixel_boxes`)
    logits = raw if bias is None else raw + bias
    probs = torch.softmax(logits, 0) * validf
    pred = class_map(probs)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(0) / math.log(k)
    values: dict[str, float | None] = {
        "entropy": float((entropy * validf).sum() / n_valid),
        "outside": None,
        "empty": None,
        "disagree": None,
    }
    if bias is not None:  # mass on the classes the rule forbids
        forbidden = (~store.rule.allowed(ev)[0]).float()
        values["outside"] = float((torch.softmax(raw, 0) * forbidden).sum(0)[valid].sum() / n_valid)
    if primary_logits is not None:
        other = primary_logits.max(0).indices
        values["disagree"] = float(((other != pred) & valid).sum() / n_valid)
    fills = box_fills(pred, valid, rects, labels)
    share = holds(pred, valid, rects, labels, k, store.rule)
    values["rare"] = float((share * class_weights).sum() / share.sum().clamp_min(1e-12))
    layout = F.adaptive_avg_pool2d(probs[None], LAYOUT_GRID)[0].flatten()
    order = torch.argsort(share, descending=True, stable=True)
    names = [store.class_names[c] for c in order.tolist() if share[c] >= CLASS_SHARE]
    return ImageSignals(values, fills, layout, names, len(labels))


def holds(
    pred: torch.Tensor,
    valid: torch.Tensor,
    rects: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    rule: ConstraintRule | None,
) -> torch.Tensor:
    """The share of the image each of the k classes holds, by the evidence a user trusts: for
    a class that gets boxes, the area of its boxes' union (`rects`, `labels`: `box_rects`);
    for the others (the background, classes without boxes: `rule.free`, or all classes of a
    store without rule), the pseudo-label's pixels outside every box. (The pseudo-label alone
    would hide the objects an ancillary net missed: those images would look poorer in rare
    classes than they are.)"""
    h, w = pred.shape
    outside = valid & ~box_cover(rects, h, w)
    from_label = torch.bincount(pred[outside], minlength=k).float()
    from_boxes = torch.zeros(k)
    for c in labels.unique().tolist():
        from_boxes[c] = float((box_cover(rects[labels == c], h, w) & valid).sum())
    free = torch.zeros(k, dtype=torch.bool)
    if rule is None:
        free[:] = True
    else:
        free[list(rule.free)] = True
        if rule.background is not None:
            free[rule.background] = True
    return torch.where(free, from_label, from_boxes) / float(h * w)


def rarity_weights(ds: SegDataset, split: str, full_ids: list[str]) -> torch.Tensor:
    """`rare`'s K class weights: median-frequency over F's masks; a class they lack (weight 1
    for the losses) gets `LACKING` times the largest weight: no class is rarer to F than one
    it never shows, and an image holding it is the one a mask would teach most."""
    masks = (ds.read_mask(split, i) for i in full_ids)
    pixels, present_in = class_pixel_counts(masks, ds.num_classes)
    weights = median_frequency(pixels, present_in)
    lacking = pixels == 0
    if lacking.any() and not lacking.all():
        weights[lacking] = LACKING * weights[~lacking].max()
    return torch.from_numpy(weights)


def empty_boxes(fills: list[list[tuple[int, float]]]) -> list[float | None]:
    """Per image: mean over its boxes of max(0, median fill of the box's class over all
    images - the box's fill); None for an image without boxes."""
    by_class: dict[int, list[float]] = {}
    for image in fills:
        for c, f in image:
            by_class.setdefault(c, []).append(f)
    typical = {c: float(np.median(v)) for c, v in by_class.items()}
    return [
        float(np.mean([max(0.0, typical[c] - f) for c, f in image])) if image else None
        for image in fills
    ]


def percentiles(values: list[float | None]) -> np.ndarray | None:
    """Each value's percentile in [0, 1] among the others (ties share their mean rank; a None
    counts as the lowest); None when no value is known."""
    if all(v is None for v in values):
        return None
    x = np.array([-np.inf if v is None else v for v in values], np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # ties: their mean rank
        same = x == v
        ranks[same] = ranks[same].mean()
    return ranks / max(len(x) - 1, 1)


def combine(signals: dict[str, list[float | None]], weights: RankWeights) -> np.ndarray:
    """The score of every image: the weighted mean of its signals' percentiles among the W
    images (signals with no value anywhere are left out). Percentiles, not values over their
    mean: on the two stores of benchmarks/rank_bench.py --stage signals they put more of W's
    wrong pseudo-label pixels in the top 23 and 46."""
    total, weight_sum = None, 0.0
    for name, w in weights.as_dict().items():
        pct = percentiles(signals[name])
        if w == 0 or pct is None:
            continue
        total = pct * w if total is None else total + pct * w
        weight_sum += w
    if total is None:
        raise BoxsegError("no signal with a weight above 0 can be computed for this store")
    return total / weight_sum


def diverse_order(
    scores: np.ndarray, layouts: torch.Tensor, diversity: float
) -> tuple[list[int], list[float]]:
    """Greedy order: each next image the one with the highest score * (1 - diversity *
    exp(-d / tau)), d its layout distance to the nearest chosen image (module docstring).
    Returns (order, each image's gain when it was chosen)."""
    n = len(scores)
    s = torch.from_numpy(np.asarray(scores, np.float64))
    if diversity == 0 or n < 2:
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        return order, [float(scores[i]) for i in order]
    x = layouts.double()
    sample = x[:: max(1, n // 2000)]  # tau from at most ~2000 images
    pair = torch.cdist(sample, sample)
    upper = pair[torch.triu(torch.ones_like(pair, dtype=torch.bool), 1)]
    tau = float(upper.median()) * TAU_FRACTION if len(upper) else 1.0
    tau = tau if tau > 0 else 1e-6
    nearest = torch.full((n,), math.inf, dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    order, gains = [], []
    for _ in range(n):
        gain = s * (1 - diversity * torch.exp(-nearest / tau))
        gain[taken] = -math.inf
        j = int(torch.argmax(gain))  # (the first of equal gains: the earlier image)
        order.append(j)
        gains.append(float(gain[j]))
        taken[j] = True
        nearest = torch.minimum(nearest, torch.cdist(x[j : j + 1], x)[0])
    return order, gains


def primary_logits(
    ds: SegDataset,
    split: str,
    store: LogitsStore,
    group: list[int],
    primary,
    device: torch.device | None,
) -> list[torch.Tensor]:
    """The primary net's K x H x W logits (on the CPU) for a group of same-size store images,
    in one forward pass."""
    images = [ds.read_image(split, store.image_ids[i]) for i in group]  # (sizes: check_sizes)
    out = predict_batch(primary[0], primary[1], images, device or torch.device("cpu"))
    return list(out.cpu())


def rank_store(
    ds: SegDataset,
    split: str,
    full_ids: list[str],
    store: LogitsStore,
    weights: RankWeights = RankWeights(),
    diversity: float = 1.0,
    primary=None,
    device: torch.device | None = None,
    quiet: bool = True,
) -> list[dict]:
    """Rows of the ranking, most useful first (see the module docstring); `primary`: (model,
    meta) of a primary net, for `disagree`."""
    class_weights = rarity_weights(ds, split, full_ids)
    found: dict[int, ImageSignals] = {}
    # gen-logits' forward passes: same-size images together, a pixel budget on the CPU
    groups = forward_passes(store.sizes, list(range(len(store))), 8, device or torch.device("cpu"))
    for _, group in track(groups, description="rank", disable=quiet):
        others = [None] * len(group)
        if primary is not None:
            others = primary_logits(ds, split, store, group, primary, device)
        for i, other in zip(group, others, strict=True):
            found[i] = image_signals(store, i, class_weights, other)
    per_image = [found[i] for i in range(len(store))]
    signals = {name: [p.values[name] for p in per_image] for name in SIGNALS}
    signals["empty"] = empty_boxes([p.fills for p in per_image])
    scores = combine(signals, weights)
    order, gains = diverse_order(scores, torch.stack([p.layout for p in per_image]), diversity)
    rows = []
    for position, (i, gain) in enumerate(zip(order, gains, strict=True), 1):
        rows.append(
            {
                "rank": position,
                "id": store.image_ids[i],
                "score": float(scores[i]),
                "gain": gain,
                **{k: signals[k][i] for k in SIGNALS},
                "boxes": per_image[i].boxes,
                "classes": " ".join(per_image[i].classes),
            }
        )
    return rows


def ranking_csv(rows: list[dict]) -> bytes:
    """The ranking as CSV (HEADER columns; empty cells for signals not computed)."""
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(HEADER)
    for r in rows:
        out.writerow([_cell(r[k]) for k in HEADER])
    return text.getvalue().encode()


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def is_ranking(path: Path) -> bool:
    """A ranking CSV (what `rank` writes: replaced only when it is one)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == ",".join(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def read_ranking(path: Path, top: int | None = None) -> list[str]:
    """The image ids of a ranking CSV, most useful first (the first `top` of them)."""
    path = Path(path)
    if not path.is_file():
        raise BoxsegError(f"{path}: ranking file not found")
    if not is_ranking(path):
        raise BoxsegError(f"{path}: not a ranking written by boxseg rank (header differs)")
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    ids = [r["id"] for r in rows if r.get("id")]
    if not ids:
        raise BoxsegError(f"{path}: the ranking lists no images")
    if top is not None:
        if top < 1:
            raise BoxsegError(f"--top {top}: must be at least 1")
        ids = ids[:top]
    return ids


@dataclass(frozen=True)
class RankOptions:
    """Everything `boxseg rank` is asked: the data, the ancillary logits store of W (`logits`)
    and the F/W split it was made for; the ranking CSV to write (`out`) and, with `top`, a
    `list_out` file of F plus the first `top` images for `--full-list` (an existing one is
    replaced only with `overwrite`); the signals' `weights`; `diversity` (0: by score alone;
    up to 1: near-duplicates of a chosen image fall back); and a primary model.pt
    (`model_path`, run on `device`) for `disagree`."""

    data: Path
    logits: str
    split: SplitSpec
    out: Path = Path("ranking.csv")
    model_path: Path | None = None
    top: int | None = None
    list_out: Path | None = None
    weights: RankWeights = field(default_factory=RankWeights)
    diversity: float = 1.0
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        """One-line errors for option values and combinations that cannot work."""
        if (self.top is None) != (self.list_out is None):
            raise BoxsegError(
                "--top and --list go together: --top K --list FILE writes F plus the "
                "K first images as a --full-list file"
            )
        if not 0 <= self.diversity <= 1:
            raise BoxsegError(f"--diversity {self.diversity}: must be between 0 and 1")


def check_outputs(opts: RankOptions) -> None:
    """One line for an --out or --list that cannot be written (or must not be replaced)."""
    output_file(opts.out, "--out", is_ranking, [Path(opts.data)])
    if opts.list_out is None:
        return
    if Path(opts.list_out).is_file() and not opts.overwrite:
        raise BoxsegError(
            f"--list {opts.list_out}: exists (a list does not say who wrote it); "
            "choose another name, or pass --overwrite to replace it"
        )
    output_file(opts.list_out, "--list", lambda p: True, [Path(opts.data)])
    if Path(opts.list_out).resolve() == Path(opts.out).resolve():
        raise BoxsegError(f"--list {opts.list_out}: the same file as --out")


def load_primary(model_path: Path, ds: SegDataset, device: torch.device) -> tuple:
    """(model, meta) of the primary net at `model_path`, for `disagree`."""
    model, meta = load_model(model_path, kind="primary", device=device)
    if tuple(meta["class_names"]) != ds.class_names:
        raise BoxsegError(f"{model_path}: the model's classes differ from the dataset's")
    return model, meta


def run_rank(opts: RankOptions, quiet: bool = False) -> list[dict]:
    """The CLI stage: rank the store's W images, write the CSV (and with `top`, the list of F
    plus the top images for `--full-list`); return the rows."""
    opts.validate()
    split = opts.split.split
    ds = open_dataset(opts.data)
    full_ids, weak_ids = split_dataset(ds, opts.split)
    if opts.top is not None and not 1 <= opts.top <= len(weak_ids):
        raise BoxsegError(f"--top {opts.top}: must be between 1 and the {len(weak_ids)} W images")
    store = LogitsStore.open(opts.logits)
    store.check_matches(list(ds.class_names), weak_ids)
    check_sizes(ds, split, store, weak_ids, opts.logits)  # (same ids, other data)
    check_outputs(opts)
    dev = resolve_device(opts.device)
    primary = None if opts.model_path is None else load_primary(opts.model_path, ds, dev)
    weights, diversity = opts.weights, opts.diversity
    rows = rank_store(ds, split, full_ids, store, weights, diversity, primary, dev, quiet)
    atomic_write_bytes(Path(opts.out), ranking_csv(rows))
    if opts.list_out is not None:
        chosen = set(full_ids) | {r["id"] for r in rows[: opts.top]}
        ids = [i for i in ds.ids(split) if i in chosen]
        atomic_write_bytes(Path(opts.list_out), "".join(f"{i}\n" for i in ids).encode())
    return rows
