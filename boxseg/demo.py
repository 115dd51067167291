"""`boxseg demo`: the whole pipeline on a generated dataset, in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from boxseg.data.boxes import BoxSpec
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.engine import TrainConfig
from boxseg.gen_logits import gen_logits
from boxseg.io import write_json
from boxseg.models import ModelSpec
from boxseg.train_anc import train_anc
from boxseg.train_primary import train_primary

# Small enough for a laptop CPU: 64x64 images, a slim resnet18 DeepLabv3+.
DEMO_SPEC = ModelSpec("resnet18", 16, aspp_channels=64, decoder_channels=64, skip_channels=32)
NUM_TRAIN, NUM_VAL, NUM_FULL = 160, 48, 32


def run_demo(
    out: Path, data_only: bool = False, iters: int = 160, device: str = "auto", quiet: bool = False
) -> dict:
    """Generate data under OUT/data, run every stage, write OUT/results.json; return it."""
    out = Path(out)
    data = write_synthetic(out / "data", NUM_TRAIN, NUM_VAL, size=64, seed=0)
    if not quiet:
        print(f"demo: dataset written to {data} (segnet layout, {NUM_TRAIN} train / {NUM_VAL} val)")
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
    )
    results = {}
    results["ancillary"] = train_anc(
        data, out / "anc", split, BoxSpec(min_area=4), DEMO_SPEC, cfg, quiet=quiet
    )["miou"]
    gen_logits(
        data,
        out / "anc" / "model.pt",
        str(out / "weak.zarr"),
        split,
        device=device,
        overwrite=True,
        quiet=quiet,
    )
    weak = str(out / "weak.zarr")
    for mode in ("none", "linear"):
        run = train_primary(data, out / mode, split, DEMO_SPEC, cfg, logits=weak, self_corr=mode,
                            quiet=quiet)  # fmt: skip
        results[mode] = run["miou"]
    results["f_only"] = train_primary(data, out / "f_only", split, DEMO_SPEC, cfg, quiet=quiet)[
        "miou"
    ]
    # conv recipe: stage 1 = an ancillary net on half of F; stages 2-3 inside train-primary
    anc_half = out / "anc_half" / "model.pt"
    train_anc(data, anc_half.parent, split, BoxSpec(min_area=4), DEMO_SPEC, cfg, quiet=quiet,
              full_fraction=0.5, val_split=None)  # fmt: skip
    gen_logits(data, anc_half, str(out / "weak_half.zarr"), split, device=device, overwrite=True,
               quiet=quiet)  # fmt: skip
    results["conv"] = train_primary(
        data, out / "conv", split, DEMO_SPEC, cfg, logits=str(out / "weak_half.zarr"),
        anc_model=anc_half, self_corr="conv", conv_hidden=32, quiet=quiet,
    )["miou"]  # fmt: skip
    write_json(out / "results.json", results)
    if not quiet:
        table = Table(title=f"boxseg demo: val mIoU % ({time.perf_counter() - t0:.0f} s)")
        table.add_column("model")
        table.add_column("mIoU", justify="right")
        for k, v in results.items():
            table.add_row(k, f"{v:.2f}")
        Console().print(table)
        print(f"demo: results in {out / 'results.json'}")
    return results
