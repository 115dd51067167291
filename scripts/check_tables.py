"""Recompute the published results tables from the JSON under docs/runs and fail on a mismatch.

Every table named in TABLES (README.md's headline table, docs/results.md's section 1.0 tables,
the recipe, `--weak-boxes`, ranking and section 6's smp tables, and docs/training.md's ranking
summary) is read
from its page, each cell is recomputed from the rows' JSON as the benchmarks compute it (mean
and sample standard deviation over seeds, as benchmarks/camvid_table.py's `mean_sd`; paired
differences seed by seed) and compared with the printed value. A printed value may differ from
the recomputed one by at most half a unit of its last digit, and never by more than 0.01 for a
two-decimal value. A seed value whose JSON was lost must be marked `†` where it is printed:
it then enters the means as printed (it is not traceable), and the same lost value must read
the same wherever it appears. Exit code 1, naming the page, table, row and column of every
mismatch; 0 when every cell agrees.

    python scripts/check_tables.py
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from boxseg.data.formats import CAMVID_CLASSES

ROOT = Path(__file__).resolve().parents[1]
LOST_MARK = "†"
NUMBER = re.compile(r"([+-]?\d+(?:\.\d+)?)(" + LOST_MARK + r")?")


@dataclass(frozen=True)
class Lost:
    """A seed value whose JSON was lost: its printed (†-marked) value is all there is."""

    name: str


Source = str | Lost  # a JSON file under docs/runs, "dir/name.json", or a lost value


@dataclass(frozen=True)
class Seeds:
    """`mean +- sd (v0, v1, ...)`, or `mean +- sd` alone (brackets=False), of `key` over the
    seeds' sources."""

    sources: tuple[Source, ...]
    key: str = "miou"
    brackets: bool = True


@dataclass(frozen=True)
class Single:
    """One run's value."""

    source: Source
    key: str = "miou"


@dataclass(frozen=True)
class Diff:
    """`mean (d0, d1, ...)`: `a` minus `b`, seed by seed (paired), and their mean."""

    a: tuple[Source, ...]
    b: tuple[Source, ...]
    key: str = "miou"


@dataclass(frozen=True)
class Gap:
    """The mean of `a` minus the mean of `b`, one number."""

    a: tuple[Source, ...]
    b: tuple[Source, ...]
    key: str = "miou"


@dataclass(frozen=True)
class PerClass:
    """`val / unseen`: a class's IoU, mean over the sources that hold a JSON."""

    sources: tuple[Source, ...]
    name: str


SKIP = None  # a cell this script does not check (text, times, "-", a column not recorded)
Cell = Seeds | Single | Diff | Gap | PerClass | None


@dataclass(frozen=True)
class Table:
    """A table of `page` found by its header line (the first one after the line that starts
    with `after`, if given); `rows` maps a row's first cell to its cells' checks (one per
    column after the first). Every row of the table must be listed."""

    page: str
    header: str
    rows: dict[str, tuple[Cell, ...]]
    after: str = ""


def seeds(pattern: str, instead: dict[int, Source] | None = None, n: int = 3) -> tuple[Source, ...]:
    """The sources of seeds 0..n-1: `pattern` with {s} the seed, but `instead[s]` (a lost
    value, or a rerun's file elsewhere) for the seeds it names."""
    return tuple((instead or {}).get(s, pattern.format(s=s)) for s in range(n))


U = "camvid_unseen/"
F_ONLY = seeds(U + "f_only_s{s}.json")
FULL = seeds(U + "full_s{s}.json")
BOX_FILL = seeds(U + "box_fill_s{s}.json")
GRABCUT = seeds(U + "grabcut_s{s}.json")
NONE = seeds(U + "none_s{s}.json", {0: "camvid_unseen_modes/none_s0.json"})
LINEAR = seeds(U + "linear_s{s}.json", {0: "camvid_unseen_modes/linear_s0.json"})
ANCILLARY = seeds(U + "ancillary_s{s}.json", {0: "camvid_unseen_recipe/ancillary_s0.json"})
STORE = seeds(U + "store_anc_s{s}.json", {0: "camvid_unseen_recipe/store_anc_s0.json"})
WEAKBOX = seeds("camvid_unseen_weakbox/none_weakbox_s{s}.json")
PEER = seeds(U + "peer_smp_s{s}.json")
FULL_256 = seeds("camvid_unseen_256/full_s{s}.json")
MODES = {
    m: seeds(f"camvid_unseen_modes/{m}_s{{s}}.json") for m in ("linear_a5", "online_linear", "conv")
}
MF = {m: seeds(f"camvid_unseen_mf/{m}_s{{s}}.json") for m in ("none", "full")}
OHEM_NONE = seeds("camvid_unseen_ohem/none_s{s}.json")
RECIPE = "camvid_unseen_recipe/"
CLASSES = CAMVID_CLASSES  # the per-class columns, in the dataset's order
SEEDS_1_2 = slice(1, 3)


def both(sources: tuple[Source, ...], brackets: bool = True) -> tuple[Cell, Cell]:
    """The in-domain and the unseen-drive cells of a row."""
    return Seeds(sources, "miou", brackets), Seeds(sources, "unseen.miou", brackets)


def classes(sources: tuple[Source, ...], names: tuple[str, ...] = CLASSES) -> tuple[Cell, ...]:
    """Per-class `val / unseen` cells, in `names` order."""
    return tuple(PerClass(sources, c) for c in names)


def rank_choice(how: str, k: int, draws: bool = False) -> tuple[Source, ...]:
    """A choice's three cells of the ranking benchmark (random: draw i trained with seed i)."""
    name = "random{s}" if draws else how
    return seeds(f"rank_k{k}/rank_{name}_k{k}_s{{s}}.json")


def rank_rows(k: int) -> dict[str, tuple[Cell, ...]]:
    """results.md's table of the ranking benchmark at K: val, unseen, W pseudo-labels left."""
    rows = {
        "`boxseg rank` (store + primary)": rank_choice("rank", k),
        "random": rank_choice("random", k, draws=True),
        "mean entropy alone": rank_choice("entropy", k),
    }
    out: dict[str, tuple[Cell, ...]] = {
        label: (SKIP, *both(src), Seeds(src, "pseudo_labels.miou"), SKIP)
        for label, src in rows.items()
    }
    if k == 23:
        one = f"rank_k{k}/rank_boxes_k{k}_s0.json"
        out["most boxes"] = (
            SKIP,
            Single(one),
            Single(one, "unseen.miou"),
            Single(one, "pseudo_labels.miou"),
            SKIP,
        )
    out["no move (F + W as they are; section 1.0's `none`)"] = (SKIP, *both(NONE), SKIP, SKIP)
    return out


def rank_summary() -> dict[str, tuple[Cell, ...]]:
    """docs/training.md's summary of the ranking benchmark: both budgets, mean +- sd."""
    out: dict[str, tuple[Cell, ...]] = {}
    for label, how, draws in (
        ("`boxseg rank` (3 seeds)", "rank", False),
        ("random (3 draws, one seed each)", "random", True),
        ("mean entropy alone (3 seeds)", "entropy", False),
    ):
        out[label] = (
            *both(rank_choice(how, 23, draws), False),
            *both(rank_choice(how, 46, draws), False),
        )
    no_move = "no move (F + W as they were: section 1.0's `none`, 3 seeds at earlier commits)"
    out[no_move] = both(NONE, False) * 2
    return out


RESULTS = "docs/results.md"
THIN = ("pole", "sign_symbol", "fence", "pedestrian", "bicyclist", "building", "road")


def unseen_table() -> Table:
    """results.md section 1.0: every row on W's drive and on the unseen drive."""
    return Table(
        RESULTS,
        "| row | val (in-domain: W's drive, 101 frames) | unseen (drive 0006R0, 101",
        {
            "F only (62 frames of 0001TP)": both(F_ONLY),
            "full supervision (all 266 masks: 0001TP + 0016E5 train)": both(FULL),
            "gap, full - F only": (Gap(FULL, F_ONLY), Gap(FULL, F_ONLY, "unseen.miou")),
            "F + W, box-fill's stride-1 store, `none`": both(BOX_FILL),
            "F + W, GrabCut's stride-1 store, `none`": both(GRABCUT),
            "F + W, the ancillary store, `--self-corr none` (the default)": both(NONE),
            "F + W, the ancillary store, `--self-corr linear` (alpha 30 -> 0.5)": both(LINEAR),
            "ancillary net (boxes given)": both(ANCILLARY),
            "F + W, the `--weak-boxes` ancillary store, `none` (section 2; commit d8c72e7)": (
                both(WEAKBOX)
            ),
            "the ceiling: smp's DeepLabV3+ on all 266 masks (below; commit a772882)": both(PEER),
        },
    )


def unseen_per_class() -> Table:
    """results.md section 1.0's per-class IoU: the mean of seeds 1 and 2."""
    rows = {"F only": F_ONLY, "full": FULL, "box-fill": BOX_FILL, "GrabCut": GRABCUT}
    rows |= {"none": NONE, "linear": LINEAR}
    return Table(
        RESULTS,
        "| row | sky | building | pole | road | pavement | tree | sign | fence | car |",
        {label: classes(sources[SEEDS_1_2]) for label, sources in rows.items()},
        after="## 1.0 ",
    )


def modes_table() -> Table:
    """results.md: every `--self-corr` mode, and each minus `none` seed by seed."""
    modes = {
        "`linear` (alpha 30 -> 0.5)": LINEAR,
        "`linear`, alpha ending at 5 (`--alpha-end 5`)": MODES["linear_a5"],
        "`linear`, online (`--anc-model`)": MODES["online_linear"],
        "`conv` (3 stages)": MODES["conv"],
    }
    rows: dict[str, tuple[Cell, ...]] = {"`none` (the default)": (*both(NONE), SKIP, SKIP, SKIP)}
    for label, sources in modes.items():
        paired = (Diff(sources, NONE), Diff(sources, NONE, "unseen.miou"))
        rows[label] = (*both(sources), *paired, SKIP)
    return Table(RESULTS, "| `--self-corr` | val (in-domain) | unseen (0006R0) | minus none,", rows)


def modes_per_class() -> Table:
    """results.md: the modes' per-class IoU, mean of the 3 seeds."""
    rows = {"none (3)": NONE, "linear (3)": LINEAR}
    rows |= {f"{mode} (3)": MODES[mode] for mode in ("linear_a5", "online_linear", "conv")}
    labels = {label: classes(sources) for label, sources in rows.items()}
    return Table(RESULTS, "| `--self-corr` (seeds) | sky |", labels)


def ceiling_table() -> Table:
    """results.md: the fully supervised ceilings (boxseg at 64 and 256 channels, the peer)."""
    rows = {
        "boxseg, 64 channels (the table's `full`)": FULL,
        "smp DeepLabV3+, 256 channels (peer)": PEER,
        "boxseg, 256 channels (`--channels 256`)": FULL_256,
    }
    header = "| fully supervised (266 masks), same protocol | val (in-domain) |"
    return Table(RESULTS, header, {label: (*both(src), SKIP) for label, src in rows.items()})


def thin_header(names: tuple[str, ...]) -> str:
    """The whole header line of a class-weighted or hard-pixel table with these classes."""
    shown = [{"sign_symbol": "sign"}.get(n, n) for n in names]
    return "| row | val (in-domain) | drive 0006R0 (unseen) | " + " | ".join(shown) + " |\n"


def thin_row(sources: tuple[Source, ...], names: tuple[str, ...]) -> tuple[Cell, ...]:
    """mIoU on both evaluations, then the per-class IoU of `names`."""
    if len(sources) == 1:  # one run: its values, no mean +- sd
        mious: tuple[Cell, ...] = (Single(sources[0]), Single(sources[0], "unseen.miou"))
    else:
        mious = both(sources)
    return (*mious, *classes(sources, names))


def weighted_table() -> Table:
    """results.md: median-frequency class weights on the primaries."""
    rows = {"none, no weights": NONE, "none, median-freq": MF["none"]}
    rows |= {"full, no weights (the table)": FULL, "full, median-freq": MF["full"]}
    cells = {label: thin_row(src, THIN) for label, src in rows.items()}
    return Table(RESULTS, thin_header(THIN), cells)


def hard_pixels_table() -> Table:
    """results.md: the hard-pixel loss on the primaries (`full` at seed 0 only)."""
    names = (*THIN, "pavement", "tree")
    rows = {"none, every pixel": NONE, "none, hardest 20%": OHEM_NONE}
    rows |= {"full, every pixel (the table)": FULL}
    rows |= {"full, hardest 20% (seed 0 only)": ("camvid_unseen_ohem/full_s0.json",)}
    cells = {label: thin_row(src, names) for label, src in rows.items()}
    return Table(RESULTS, thin_header(names), cells)


def recipe_table() -> Table:
    """results.md: the ancillary recipe on a second split, each change paired with the
    default store of the same seed."""
    default = "default recipe (direct path, max-pooled boxes, median-freq weights, constraint on,"
    rows: dict[str, tuple[Cell, ...]] = {
        default + " prior 0)": (Seeds(STORE), SKIP, *both(ANCILLARY))
    }
    nets = {
        "the paper's box path (nearest-resized boxes, no direct path)": "nearest",
        "no class weights": "unweighted",
    }
    for label, name in nets.items():
        store = seeds(RECIPE + f"store_anc_{name}_s{{s}}.json")
        rows[label] = (
            Seeds(store),
            Diff(store, STORE),
            *both(seeds(RECIPE + f"anc_{name}_s{{s}}.json")),
        )
    stores = {"box constraint off (same net as the default)": "noconstraint"}
    stores |= {f"smaller-box prior {p} (same net)": f"prior{p}" for p in (1, 2, 4)}
    for label, name in stores.items():
        store = seeds(RECIPE + f"store_anc_s{{s}}_{name}.json")
        rows[label] = (Seeds(store), Diff(store, STORE), SKIP, SKIP)
    return Table(
        RESULTS, "| ancillary net / store | W pseudo-labels, stride 4 (W's footage) |", rows
    )


def weak_box_tables() -> tuple[Table, Table]:
    """results.md: the `--weak-boxes` ancillary nets on CamVid, and their primaries."""
    fixed = "camvid_unseen_weakbox/"
    nets = {
        "today's recipe (seeds 0, 1, 2; seed 0 the net retrained at 9903942, section 1.0)": (
            Seeds(STORE),
            *both(ANCILLARY),
        ),
        "+ `--weak-boxes`, before the fix (commit b061797, seed 0)": (
            Single(U + "store_anc_weakbox_s0.json"),
            Single(U + "anc_weakbox_s0.json"),
            Single(U + "anc_weakbox_s0.json", "unseen.miou"),
        ),
        "+ `--weak-boxes` (commit 7060438, seeds 0, 1 and 2)": (
            Seeds(seeds(fixed + "store_anc_weakbox_s{s}.json")),
            *both(seeds(fixed + "anc_weakbox_s{s}.json")),
        ),
    }
    primaries = {
        "from today's ancillary store (section 1.0)": both(NONE),
        "from the `--weak-boxes` store": both(WEAKBOX),
        "difference, seed for seed": (Diff(WEAKBOX, NONE), Diff(WEAKBOX, NONE, "unseen.miou")),
    }
    return (
        Table(RESULTS, "| ancillary net, CamVid (issue 22's split) | W pseudo-labels,", nets),
        Table(RESULTS, "| primary, `--self-corr none` | val (in-domain: W's drive) |", primaries),
    )


def smp_table() -> Table:
    """results.md section 6: smp's DeepLabV3+ as both nets beside boxseg's own rows."""
    smp = {n: seeds(f"camvid_unseen_smp/{n}_s{{s}}.json") for n in SMP_ROWS}
    names = {
        "F only": (F_ONLY, "f_only"),
        "full supervision": (FULL, "full"),
        "ancillary net (boxes given)": (ANCILLARY, "ancillary"),
        "F + W from the ancillary store, `none`": (NONE, "none"),
        "F + W from box-fill's store, `none`": (BOX_FILL, "box_fill"),
    }
    rows: dict[str, tuple[Cell, ...]] = {}
    for name, (own, theirs) in names.items():
        rows[f"{name}, boxseg"] = (*both(own), SKIP)
        rows[f"{name}, smp"] = (*both(smp[theirs]), SKIP)
    store = "the ancillary store, W pseudo-labels"
    rows[f"{store}, boxseg"] = (Seeds(STORE), SKIP, SKIP)
    rows[f"{store}, smp"] = (Seeds(smp["store_anc"]), SKIP, SKIP)
    return Table(RESULTS, "| row, network | val (in-domain) |", rows)


SMP_ROWS = ("f_only", "full", "ancillary", "none", "box_fill", "store_anc")


def readme_table() -> Table:
    """README.md's headline: section 1.0's rows and the ceilings, mean +- sd."""
    rows = {
        "F only": F_ONLY,
        "F + W, box-fill pseudo-labels (pixel level)": BOX_FILL,
        "F + W, GrabCut pseudo-labels (pixel level)": GRABCUT,
        "F + W, the ancillary store, `--self-corr none` (the default)": NONE,
        "F + W, the ancillary store, `--self-corr linear`": LINEAR,
        "F + W, the `--weak-boxes` ancillary store, `--self-corr none`": WEAKBOX,
        "all 266 masks of F's and W's drives (same protocol, same machine)": FULL,
        "all 266 masks, boxseg at 256 channels": FULL_256,
        "all 266 masks, smp's DeepLabV3+ (a peer, trained the same way)": PEER,
    }
    header = "| row (F = 62 frames of 0001TP, W = 204 of 0016E5) |"
    return Table("README.md", header, {label: both(src, False) for label, src in rows.items()})


TABLES = (
    unseen_table(),
    unseen_per_class(),
    modes_table(),
    modes_per_class(),
    ceiling_table(),
    weighted_table(),
    hard_pixels_table(),
    recipe_table(),
    *weak_box_tables(),
    Table(RESULTS, "| choice of 23 W images to mask |", rank_rows(23)),
    Table(RESULTS, "| choice of 46 W images to mask |", rank_rows(46)),
    Table("docs/training.md", "| choice of K W images to mask |", rank_summary()),
    smp_table(),
    readme_table(),
)


class Checker:
    """Reads the runs' JSON once, holds the lost values as printed, collects the mismatches
    (`root`: the repository whose pages and docs/runs are checked)."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.json: dict[str, dict] = {}
        self.lost: dict[str, float] = {}
        self.errors: list[str] = []

    def value(self, source: Source, key: str) -> float:
        """A run's value of `key` ("miou", "unseen.miou", ...), or a lost value as printed."""
        if isinstance(source, Lost):
            name = f"{source.name} {key}"
            if name not in self.lost:
                raise KeyError(
                    f"lost value {name} is printed (with {LOST_MARK}) nowhere before this table"
                )
            return self.lost[name]
        if source not in self.json:
            path = self.root / "docs" / "runs" / source
            self.json[source] = json.loads(path.read_text(encoding="utf-8"))
        got = self.json[source]
        for part in key.split("."):
            got = got[part]
        return float(got)

    def values(self, sources: tuple[Source, ...], key: str) -> list[float]:
        return [self.value(s, key) for s in sources]

    def check_cell(self, where: str, cell: Cell, text: str) -> None:
        """Compare one printed cell with its recomputation; record what differs."""
        printed = [(float(m[1]), m[1], bool(m[2])) for m in NUMBER.finditer(text)]
        try:
            expected = self.expected(cell, printed, where)
        except (KeyError, FileNotFoundError) as e:
            self.errors.append(f"{where}: cannot recompute: {e}")
            return
        if len(expected) != len(printed):
            self.errors.append(
                f"{where}: printed {text.strip()!r}, expected {len(expected)} numbers"
            )
            return
        for (value, digits, _), want in zip(printed, expected, strict=True):
            decimals = len(digits.split(".")[1]) if "." in digits else 0
            if abs(value - want) > max(0.01, 0.5 * 10**-decimals) + 1e-9:
                self.errors.append(
                    f"{where}: printed {digits}, recomputed {want:.{decimals}f} "
                    f"(in {text.strip()!r})"
                )

    def expected(self, cell: Cell, printed: list[tuple[float, str, bool]], where: str) -> list:
        """The numbers a cell should print, in order (lost seeds taken from `printed`)."""
        if isinstance(cell, Seeds):
            seed_values = self.seed_values(cell, printed[2:], where)
            mean, sd = mean_sd(seed_values)
            return [mean, sd] + (seed_values if cell.brackets else [])
        if isinstance(cell, Single):
            return [self.value(cell.source, cell.key)]
        if isinstance(cell, (Diff, Gap)):
            a, b = self.values(cell.a, cell.key), self.values(cell.b, cell.key)
            if isinstance(cell, Gap):
                return [statistics.mean(a) - statistics.mean(b)]
            paired = [x - y for x, y in zip(a, b, strict=True)]
            return [statistics.mean(paired), *paired]
        recorded = [s for s in cell.sources if not isinstance(s, Lost)]
        return [
            statistics.mean(self.values(recorded, f"{evaluation}per_class_iou.{cell.name}"))
            for evaluation in ("", "unseen.")
        ]

    def seed_values(self, cell: Seeds, printed: list[tuple[float, str, bool]], where: str) -> list:
        """The seeds' values; a lost seed's as printed (and remembered), each mark checked."""
        out = []
        for k, source in enumerate(cell.sources):
            marked = k < len(printed) and printed[k][2]
            if isinstance(source, Lost) and cell.brackets:
                if not marked:
                    self.errors.append(f"{where}: seed {k} has no JSON: mark it {LOST_MARK}")
                if k < len(printed):
                    self.remember(f"{source.name} {cell.key}", printed[k][0], where)
            elif marked:
                self.errors.append(f"{where}: seed {k} has a JSON ({source}): drop the {LOST_MARK}")
            out.append(self.value(source, cell.key))
        return out

    def remember(self, name: str, value: float, where: str) -> None:
        """A lost value as printed; the same lost value must read the same everywhere."""
        if name in self.lost and abs(self.lost[name] - value) > 1e-9:
            self.errors.append(
                f"{where}: lost value {name} printed as {value}, elsewhere {self.lost[name]}"
            )
        self.lost.setdefault(name, value)

    def check_table(self, table: Table) -> None:
        """Check every listed row of one table, and that it lists every row."""
        found = table_rows(self.root / table.page, table.header, table.after)
        label = f"{table.page}: table {table.header.strip()[:60]!r}"
        if found is None:
            self.errors.append(f"{label}: not found (its header line, once)")
            return
        for name in sorted(set(found) - set(table.rows)):
            self.errors.append(f"{label}: row {name!r} is not checked by this script")
        for name, cells in table.rows.items():
            if name not in found:
                self.errors.append(f"{label}: row {name!r} not found")
                continue
            if holds_lost(cells) != (LOST_MARK in name) and not any(
                isinstance(c, Seeds) and c.brackets for c in cells
            ):
                self.errors.append(
                    f"{label}, row {name!r}: a row whose means hold a lost seed (and only such "
                    f"a row) is marked {LOST_MARK}"
                )
            texts = found[name]
            if len(texts) != len(cells):
                self.errors.append(
                    f"{label}, row {name!r}: {len(texts)} cells, expected {len(cells)}"
                )
                continue
            for column, (cell, text) in enumerate(zip(cells, texts, strict=True), start=2):
                if cell is not None:
                    self.check_cell(f"{label}, row {name!r}, column {column}", cell, text)


def holds_lost(cells: tuple[Cell, ...]) -> bool:
    """Whether a mean of these cells takes a lost seed value."""
    return any(isinstance(c, Seeds) and any(isinstance(s, Lost) for s in c.sources) for c in cells)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, as benchmarks/camvid_table.py's `mean_sd`."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table_rows(page: Path, header: str, after: str = "") -> dict[str, list[str]] | None:
    """First cell -> the other cells (bold marks removed) of the table whose header line starts
    with `header` (a trailing newline in `header`: the whole line): the only one, or with
    `after` the first one after the line starting with `after`; None if there is none."""
    lines = page.read_text(encoding="utf-8").splitlines()
    whole = header.endswith("\n")
    first = next((n for n, line in enumerate(lines) if line.startswith(after)), None)
    starts = [
        n
        for n, line in enumerate(lines)
        if first is not None
        and n > first
        and (line == header.rstrip("\n") if whole else line.startswith(header))
    ]
    if not starts or (len(starts) > 1 and not after):
        return None
    rows: dict[str, list[str]] = {}
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def check(root: Path = ROOT) -> Checker:
    """Check TABLES as printed under `root` against its docs/runs JSON (`.errors`: every
    mismatch)."""
    checker = Checker(root)
    for table in TABLES:
        checker.check_table(table)
    return checker


def main(root: Path = ROOT) -> int:
    """Print the mismatches; 1 if there is any, else 0."""
    checker = check(root)
    for error in checker.errors:
        print(error)
    cells = sum(len(r) for t in TABLES for r in t.rows.values())
    if checker.errors:
        print(f"check_tables: {len(checker.errors)} mismatches")
        return 1
    print(
        f"check_tables: {len(TABLES)} tables, {cells} cells agree with docs/runs "
        f"({len(checker.lost)} lost seed values, marked {LOST_MARK}, taken as printed)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
