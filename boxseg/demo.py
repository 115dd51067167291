"""`boxseg demo`: the whole pipeline on a generated dataset, in a minute or two on a CPU.

The data is made so that boxes matter: 8 masked images (F) are too few for the primary net
alone, the 152 weak images (W) carry boxes only, and the ancillary net turns those boxes into
pseudo-labels. The demo trains the ancillary net, writes W's logits, and trains the primary
net twice: on F alone and on F + W (`--self-corr none`, the default).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from boxseg.data.boxes import BoxSpec
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.engine import TrainConfig
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.io import write_json
from boxseg.models import ModelSpec
from boxseg.outputs import output_dir
from boxseg.primary_options import PrimaryOptions, WeakOptions
from boxseg.train_anc import AncOptions, train_anc
from boxseg.train_primary import train_primary

# Small enough for a laptop CPU: 64x64 images, a slim resnet18 DeepLabv3+.
DEMO_SPEC = ModelSpec("resnet18", 16, aspp_channels=64, decoder_channels=64, skip_channels=32)
NUM_TRAIN, NUM_VAL, NUM_FULL = 160, 48, 8


def run_demo(
    out: Path,
    data_only: bool = False,
    iters: int = 160,
    device: str = "auto",
    quiet: bool = False,
    data_seed: int = 0,
) -> dict:
    """Generate data under OUT/data (objects wear their class's texture family on plain
    backgrounds), run every stage, write OUT/results.json; return it."""
    out = output_dir(out, "demo")  # (a rerun replaces the demo's own runs and data)
    data = write_synthetic(
        out / "data", NUM_TRAIN, NUM_VAL, size=64, seed=data_seed, class_texture=True, clutter=False
    )
    if not quiet:
        n_weak = NUM_TRAIN - NUM_FULL
        print(
            f"demo: dataset written to {data} (segnet layout, {NUM_TRAIN} train / {NUM_VAL} "
            f"val; F = {NUM_FULL} masked images, W = the other {n_weak})"
        )
    if data_only:
        return {}
    t0 = time.perf_counter()
    split = SplitSpec("train", NUM_FULL, 0)
    cfg = TrainConfig(
        iters=iters,
        batch_size=8,
        crop=64,
        scale_min=0.75,
        scale_max=1.25,
        lr=0.003,
        optimizer="adamw",
        device=device,
        overwrite=True,
    )
    results = {}
    anc = AncOptions(data, out / "anc", split, DEMO_SPEC, cfg, boxes=BoxSpec(min_area=4))
    results["ancillary"] = train_anc(anc, quiet)["miou"]
    weak = str(out / "weak.zarr")
    anc_model = out / "anc" / "model.pt"
    gen_logits(GenLogitsOptions(data, weak, split, anc_model, device=device, overwrite=True), quiet)
    f_only = PrimaryOptions(data, out / "f_only", split, DEMO_SPEC, cfg)
    results["f_only"] = train_primary(f_only, quiet)["miou"]
    # F + W: 4 masked and 4 weak images a step, as many images as F alone sees
    fw = dataclasses.replace(
        f_only,
        out=out / "none",
        train=dataclasses.replace(cfg, batch_size=4),
        weak=WeakOptions(logits=weak),
    )
    results["none"] = train_primary(fw, quiet)["miou"]  # the default mode
    seconds = time.perf_counter() - t0
    write_json(out / "results.json", results | {"seconds": seconds, "data_seed": data_seed})
    if not quiet:
        table = Table(title=f"boxseg demo: val mIoU % ({seconds:.0f} s)")
        table.add_column("model")
        table.add_column("mIoU", justify="right")
        names = {
            "ancillary": "ancillary (boxes given)",
            "f_only": "primary, F alone",
            "none": "primary, F + W (none)",
        }
        for k, v in results.items():
            table.add_row(names[k], f"{v:.2f}")
        Console().print(table)
        print(f"demo: results in {out / 'results.json'}")
    return results
