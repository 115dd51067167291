"""Which W images to mask next: does `boxseg rank`'s choice beat a random one?

The protocol and the cache are camvid_table.py's (run it first, or let this script run it): the
same resized CamVid, the same unseen drive (`--unseen-video`, only evaluated), the same F
(`--full-list`, or a random `--full-fraction` of the seen frames), the same training budget.
From camvid_table's seed-`--rank-seed` rows it takes the ancillary store of W and the
`--self-corr none` primary (rows ancillary and none), and ranks W with them. Then, for each
K in `--k`, it moves K images of W into F, chosen by:

- rank: `boxseg rank` (store + primary, the default weights and diversity);
- entropy: highest mean entropy alone (`--weights entropy=1,...=0 --diversity 0`);
- boxes: the most boxes;
- random0..: `--random-draws` uniform draws (numpy seeds 100, 101, ...);

and, for every training seed in `--seeds`, retrains the ancillary net on the new F, writes its
store of the new W (stride 4) and scores it against W's held-back masks, then trains the
`--self-corr none` primary and scores it in-domain (val, W's footage) and on the unseen drive.
The report also scores every cell's store, and camvid_table's no-move stores (anc_s*), on one
set: the W images that no choice in `--choices` moved (`W untouched`), since each choice's own
remaining W differs (the easier its leftovers, the higher its `W pseudo`).
Every result is cached in OUT/rows/rank_*.json (with the commit), so a killed run resumes and
processes can share OUT (`--choices`, `--seeds` split the work).

`--stage signals` is the cheap check behind the default weights: on a store whose W images
have masks, how each signal and the combined score rank the images by their count of wrong
pseudo-label pixels (Spearman), and which share of all wrong pixels each choice's top K hold.

    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-table --seeds 0 \\
        --rows none
    python benchmarks/rank_bench.py ../shared/data/camvid --out camvid-table --json rank.json
    python benchmarks/rank_bench.py ../shared/data/camvid --out camvid-table --stage signals
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_table import CODE, cached_row, footage_split, mean_sd, resized_copy, scores  # noqa: E402

from boxseg.checkpoint import load_model  # noqa: E402
from boxseg.data.boxes import BoxSpec  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec, split_dataset  # noqa: E402
from boxseg.engine import TrainConfig, resolve_device  # noqa: E402
from boxseg.evaluate import evaluate_model, evaluate_store, pseudo_labels  # noqa: E402
from boxseg.gen_logits import GenLogitsOptions, gen_logits  # noqa: E402
from boxseg.models import ModelSpec, build_model  # noqa: E402
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions  # noqa: E402
from boxseg.rank import SIGNALS, RankWeights, combine, percentiles, rank_store  # noqa: E402
from boxseg.store import LogitsStore  # noqa: E402
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402
from boxseg.train_primary import primary_meta, train_primary  # noqa: E402

ENTROPY_ONLY = RankWeights(1.0, 0.0, 0.0, 0.0, 0.0)


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties share their mean rank: `rank.percentiles`)."""
    return float(np.corrcoef(percentiles(list(a)), percentiles(list(b)))[0, 1])


def wrong_pixels(ds, split: str, store: LogitsStore) -> np.ndarray:
    """Per store image: labelled pixels its pseudo-label gets wrong (W's held-back masks)."""
    out = []
    for i, image_id in enumerate(store.image_ids):
        mask, pred = ds.read_mask(split, image_id), pseudo_labels(store, i)
        labelled = mask != 255
        out.append(int((pred[labelled] != mask[labelled]).sum()))
    return np.array(out, np.float64)


def signals_check(ds, split: str, full: list[str], store: LogitsStore, ks: list[int],
                  primary=None, device=None) -> dict:  # fmt: skip
    """How the signals order W by wrong pseudo-label pixels (module docstring)."""
    rows = rank_store(ds, split, full, store, RankWeights(), 0.0, primary, device)
    rows.sort(key=lambda r: store.index(r["id"]))
    wrong = wrong_pixels(ds, split, store)
    signals = {s: [r[s] for r in rows] for s in SIGNALS}
    out: dict = {"images": len(rows), "spearman_with_wrong_pixels": {}, "top_k_share": {}}
    for name in (*SIGNALS, "boxes"):
        values = [r[name] for r in rows]
        if all(v is None for v in values):
            continue
        known = np.array([v is not None for v in values])
        v = np.array([np.nan if x is None else x for x in values], float)
        out["spearman_with_wrong_pixels"][name] = spearman(v[known], wrong[known])
    by = {"rank (no diversity)": combine(signals, RankWeights()),
          "entropy": combine(signals, ENTROPY_ONLY),
          "boxes": np.array([r["boxes"] for r in rows], float)}  # fmt: skip
    out["spearman_with_wrong_pixels"]["score"] = spearman(by["rank (no diversity)"], wrong)
    for k in ks:
        share = {name: float(wrong[np.argsort(-s, kind="stable")[:k]].sum() / wrong.sum())
                 for name, s in by.items()}  # fmt: skip
        share["random (expected)"] = k / len(rows)
        out["top_k_share"][str(k)] = share
    return out


def time_ranking(
    ds,
    split_name: str,
    full: list[str],
    store: LogitsStore,
    primary,
    dev,
    rewrite: GenLogitsOptions,
    repeats: int = 3,
) -> dict:
    """The ranking, and in the same process the cost of ranking W (with the primary, and
    from the store alone) against writing W's store again with the ancillary net (gen-logits
    as `rewrite` says, into its `out`, removed before each run): medians of `repeats`
    alternating runs."""
    times: dict[str, list[float]] = {"rank": [], "rank_store_only": [], "gen_logits": []}
    scratch = Path(rewrite.out)
    for _ in range(repeats):
        t = time.perf_counter()
        rows = rank_store(ds, split_name, full, store, RankWeights(), 1.0, primary, dev)
        times["rank"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rank_store(ds, split_name, full, store, RankWeights(), 1.0)
        times["rank_store_only"].append(time.perf_counter() - t)
        shutil.rmtree(scratch, ignore_errors=True)  # (else gen-logits resumes: no work)
        t = time.perf_counter()
        gen_logits(rewrite, quiet=True)
        times["gen_logits"].append(time.perf_counter() - t)
    shutil.rmtree(scratch, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"rows": rows, "rank_seconds": median["rank"],
            "rank_store_only_seconds": median["rank_store_only"],
            "gen_logits_seconds": median["gen_logits"], "runs": times}


def choose(rows: list[dict], signals_rows: list[dict], k: int, how: str) -> list[str]:
    """K W ids by one choice rule (`rows`: the ranking; `signals_rows`: the entropy-only one)."""
    if how == "rank":
        return [r["id"] for r in rows[:k]]
    if how == "entropy":
        return [r["id"] for r in signals_rows[:k]]
    ids = sorted(r["id"] for r in rows)
    if how == "boxes":
        return [r["id"] for r in sorted(rows, key=lambda r: (-r["boxes"], r["id"]))[:k]]
    draw = int(how[len("random"):])
    pick = np.random.default_rng(100 + draw).choice(len(ids), k, replace=False)
    return [ids[i] for i in sorted(pick)]


def untouched_ids(weak: list[str], cells: dict[str, list[dict]]) -> list[str]:
    """W's images that no cell's choice moved into F (`cells`: choice -> its rows, each with
    "chosen"), in W's order: the one set every cell's store is scored on, since each choice
    leaves a different W behind."""
    taken = {i for rows in cells.values() for r in rows for i in r["chosen"]}
    return [i for i in weak if i not in taken]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("camvid-table"),
                    help="camvid_table.py's OUT (its data copy, rows and runs are shared)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--stage", choices=("train", "signals", "ranking", "cost", "report"),
                    default="train", help="ranking: only rank W (cached) and time it against "
                    "writing W's store; report: only the table from the cache")  # fmt: skip
    ap.add_argument("--full-list", type=Path, help="F's ids (as camvid_table.py --full-list)")
    ap.add_argument("--full-fraction", type=float, default=0.25)
    ap.add_argument("--unseen-video", default="0006R0")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--k", default="23,46", help="images moved from W into F")
    ap.add_argument("--choices", default="rank,entropy,boxes,random0,random1,random2")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of every cell")
    ap.add_argument("--rank-seed", type=int, default=0,
                    help="the camvid_table seed whose store and primary the ranking reads")
    ap.add_argument("--store", help="--stage signals: this store instead (its dataset's train "
                    "split, F = --num-full drawn with seed 0)")  # fmt: skip
    ap.add_argument("--num-full", type=int)
    ap.add_argument("--anc-model", help="--stage cost: the store's ancillary model.pt")
    ap.add_argument("--primary", help="--stage cost: a primary model.pt (default: an untrained "
                    "one of --channels: weights do not change the speed)")  # fmt: skip
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--anc-iters", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fw-batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    dev = resolve_device(args.device)
    if args.store and args.stage == "cost":  # any store: ranking against writing it
        store_c = LogitsStore.open(args.store)
        attrs = store_c.attrs["dataset"]
        ds_c = open_dataset(Path(attrs["root"]))
        sp = SplitSpec(**{k: v for k, v in attrs["split"].items() if k != "full_list"},
                       full_list=attrs["split"].get("full_list"))  # fmt: skip
        full_c, _ = split_dataset(ds_c, sp)
        if args.primary:
            net = load_model(args.primary, kind="primary", device=dev)
        else:  # an untrained primary of the README's size: weights do not change its speed
            spec = ModelSpec("resnet18", 16, args.channels, args.channels)
            net = (build_model(spec, ds_c.num_classes).to(dev).eval(),
                   primary_meta(spec, ds_c, "f_only", None, 0))  # fmt: skip
        scratch = str(Path(args.out) / "cost_scratch.zarr")
        rewrite = GenLogitsOptions(ds_c.root, scratch, sp, Path(args.anc_model), device=str(dev))
        timed = time_ranking(ds_c, sp.split, full_c, store_c, net, dev, rewrite)
        result = {k: v for k, v in timed.items() if k != "rows"} | {
            "images": len(store_c), "commit": CODE, "untrained_primary": not args.primary}
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    if args.store:  # signals of any store whose W has masks
        ds_s = open_dataset(Path(LogitsStore.open(args.store).attrs["dataset"]["root"]))
        full_s, _ = split_dataset(ds_s, SplitSpec("train", args.num_full, 0))
        result = signals_check(ds_s, "train", full_s, LogitsStore.open(args.store), ks)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return

    out = args.out
    data = resized_copy(args.data, out / "data", ["train", "val"], args.scale)
    train_split, unseen = "train", None
    if args.unseen_video:
        train_split, unseen = footage_split(data, "train", args.unseen_video)
    ds = open_dataset(data)
    n_train = len(ds.ids(train_split))
    split = SplitSpec(train_split, round(args.full_fraction * n_train), 0)
    if args.full_list:
        split = SplitSpec(train_split, None, 0, args.full_list.resolve())
    full, weak = split_dataset(ds, split)
    base_store = out / "stores" / f"anc_s{args.rank_seed}.zarr"
    base_primary = out / "runs" / f"none_s{args.rank_seed}" / "model.pt"
    if not base_store.is_dir() or not base_primary.is_file():
        raise SystemExit(f"{base_store} or {base_primary} missing: run camvid_table.py with "
                         f"--out {out} --seeds {args.rank_seed} --rows none first")  # fmt: skip
    store = LogitsStore.open(str(base_store))
    primary = load_model(base_primary, kind="primary", device=dev)

    if args.stage == "signals":
        result = signals_check(ds, train_split, full, store, ks, primary, dev)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return

    rows_dir = out / "rows"

    def rank_and_time() -> dict:
        anc_model = out / "runs" / f"ancillary_s{args.rank_seed}" / "model.pt"
        scratch = str(out / "stores" / f"rank_timing_s{args.rank_seed}.zarr")
        rewrite = GenLogitsOptions(data, scratch, split, anc_model, device=str(dev))
        timed = time_ranking(ds, train_split, full, store, primary, dev, rewrite)
        return timed | {"entropy_rows": rank_store(ds, train_split, full, store, ENTROPY_ONLY,
                                                   0.0)}  # fmt: skip

    ranking = cached_row(rows_dir, f"rank_ranking_s{args.rank_seed}", rank_and_time)
    gen_seconds = ranking["gen_logits_seconds"]
    if args.stage == "ranking":
        print(f"ranked {len(ranking['rows'])} W images in {ranking['rank_seconds']:.2f} s with "
              f"--model ({ranking['rank_store_only_seconds']:.2f} s from the store alone); "
              f"writing their store took {gen_seconds:.2f} s (medians of "
              f"{len(ranking['runs']['rank'])}); first: "
              f"{', '.join(r['id'] for r in ranking['rows'][:5])}")  # fmt: skip
        return
    spec = ModelSpec("resnet18", 16, args.channels, args.channels)
    box_spec = BoxSpec(min_area=4)
    choices = args.choices.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    def cfg(seed: int, iters: int, batch: int) -> TrainConfig:
        return TrainConfig(iters=iters, batch_size=batch, crop=args.crop, scale_min=0.75,
                           scale_max=1.25, lr=args.lr, optimizer="adamw", seed=seed,
                           device=args.device, checkpoint_every=250, resume=True)  # fmt: skip

    def on(model_path: Path, split_name: str) -> dict:
        model, meta = load_model(model_path, device=dev)
        return scores(evaluate_model(model, meta, ds, split_name, dev, quiet=True))

    def cell(how: str, k: int, seed: int) -> dict:
        chosen = choose(ranking["rows"], ranking["entropy_rows"], k, how)
        lists = out / "rank_lists"
        lists.mkdir(exist_ok=True)
        listed = lists / f"{how}_k{k}.txt"
        keep = set(full) | set(chosen)
        listed.write_text("".join(f"{i}\n" for i in ds.ids(train_split) if i in keep))
        sp = SplitSpec(train_split, None, 0, listed.resolve())
        name = f"rank_{how}_k{k}_s{seed}"
        run = out / "runs" / name
        anc = run / "anc"
        anc_cfg = cfg(seed, args.anc_iters, args.batch_size)
        train_anc(AncOptions(data, anc, sp, spec, anc_cfg, box_spec, val_split=""), quiet=True)
        location = str(out / "stores" / f"{name}.zarr")
        anc_model = anc / "model.pt"
        gen_logits(GenLogitsOptions(data, location, sp, anc_model, device=args.device), quiet=True)
        quality = evaluate_store(ds, train_split, location, quiet=True)
        c = cfg(seed, args.iters, args.fw_batch)
        weak = WeakOptions(logits=location)
        opts = PrimaryOptions(data, run / "primary", sp, spec, c, weak, CorrectionOptions("none"))
        train_primary(replace(opts, val_split=""), quiet=True)
        result = {"chosen": chosen, "pseudo_labels": scores(quality),
                  **on(run / "primary" / "model.pt", "val")}  # fmt: skip
        if unseen:
            result["unseen"] = on(run / "primary" / "model.pt", unseen)
        return result

    if args.stage == "train":
        for seed in seeds:
            for k in ks:
                for how in choices:
                    cached_row(rows_dir, f"rank_{how}_k{k}_s{seed}",
                               lambda how=how, k=k, seed=seed: cell(how, k, seed),
                               lambda r: f"val {r['miou']:.2f}, unseen "
                               f"{r.get('unseen', {}).get('miou', float('nan')):.2f}")  # fmt: skip

    def summarise(values: list[float]) -> dict:
        mean, sd = mean_sd(values)
        return {"mean": mean, "values": values, "sd": sd}

    def on_untouched(stores: list[Path], untouched: list[str]) -> dict:
        return summarise([evaluate_store(ds, train_split, str(p), quiet=True,
                                         only=untouched)["miou"] for p in stores])  # fmt: skip

    table: dict = {}
    untouched_sizes: dict[str, int] = {}
    for k in ks:
        cells = {how: [json.loads(p.read_text()) | {"seed": s} for s in seeds
                       if (p := rows_dir / f"rank_{how}_k{k}_s{s}.json").is_file()]
                 for how in choices}  # fmt: skip
        untouched = untouched_ids(weak, cells)
        untouched_sizes[str(k)] = len(untouched)
        for how, runs in cells.items():
            if not runs:
                continue
            entry = {"seeds": len(runs), "commits": sorted({r["commit"] for r in runs})}
            for key, get in (("in_domain", lambda r: r["miou"]),
                             ("unseen", lambda r: r["unseen"]["miou"]),
                             ("pseudo_labels", lambda r: r["pseudo_labels"]["miou"])):  # fmt: skip
                values = [get(r) for r in runs if key != "unseen" or "unseen" in r]
                if values:
                    entry[key] = summarise(values)
            stores = [out / "stores" / f"rank_{how}_k{k}_s{r['seed']}.zarr" for r in runs]
            if untouched and all(p.is_dir() for p in stores):
                entry["pseudo_untouched"] = on_untouched(stores, untouched)
            table[f"{how}_k{k}"] = entry
        base = [out / "stores" / f"anc_s{s}.zarr" for s in seeds]
        if untouched and all(p.is_dir() for p in base):  # camvid_table's ancillary: no move
            table[f"no_move_k{k}"] = {"seeds": len(base),
                                      "pseudo_untouched": on_untouched(base, untouched)}
    random_rows = {k: [v for n, v in table.items() if n.startswith("random") and
                       n.endswith(f"_k{k}")] for k in ks}  # fmt: skip
    summary = {"table": table, "num_full": len(full), "num_weak": len(weak),
               "untouched": untouched_sizes,
               "rank_seconds": ranking["rank_seconds"], "gen_logits_seconds": gen_seconds,
               "random_mean": {str(k): {key: statistics.mean(v[key]["mean"] for v in rows)
                                        for key in ("in_domain", "unseen", "pseudo_labels")
                                        if rows and all(key in v for v in rows)}
                               for k, rows in random_rows.items()}}  # fmt: skip
    print(f"F = {len(full)}, W = {len(weak)}; ranking W {ranking['rank_seconds']:.1f} s, "
          f"writing its store {gen_seconds:.1f} s")  # fmt: skip
    print(f"untouched W images (no choice moved them): {untouched_sizes}")
    print(f"{'choice':<14} {'in-domain':>15} {'unseen':>15} {'W pseudo':>15} "
          f"{'W untouched':>15}  seeds")  # fmt: skip
    for name, e in table.items():
        cells = [f"{e[key]['mean']:6.2f} +- {e[key]['sd']:4.2f}" if key in e else f"{'-':>15}"
                 for key in ("in_domain", "unseen", "pseudo_labels", "pseudo_untouched")]
        print(f"{name:<14} {' '.join(f'{c:>15}' for c in cells)}  {e['seeds']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
