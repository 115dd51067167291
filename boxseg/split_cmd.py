"""`boxseg split`: write the F / W lists of a split (and the half of F that conv's stage 1
trains on) so runs are reproducible and shareable: pass `--full-list DIR/full.txt` afterwards."""

from __future__ import annotations

from pathlib import Path

from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec, fraction_of, split_dataset
from boxseg.io import atomic_write_bytes, write_json
from boxseg.outputs import output_dir


def write_split(data: Path, spec: SplitSpec, out: Path) -> dict:
    """Write OUT/full.txt, weak.txt, full_half.txt and split.json; return the counts."""
    ds = open_dataset(data)
    full, weak = split_dataset(ds, spec)
    half = fraction_of(full, 0.5, spec.seed)
    out = output_dir(out, "split", [Path(data)])
    for name, ids in (("full", full), ("weak", weak), ("full_half", half)):
        atomic_write_bytes(out / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode())
    info = {
        "dataset": ds.describe(),
        "split": spec.to_dict(),
        "num_full": len(full),
        "num_weak": len(weak),
        "num_full_half": len(half),
    }
    write_json(out / "split.json", info)
    return info
