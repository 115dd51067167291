"""The fully supervised ceiling from a peer: segmentation_models_pytorch's DeepLabV3+ trained
with camvid_table.py's protocol on the same images, beside boxseg's own `full` row.

A user comparing boxseg's gap with the field's would train smp's DeepLabV3+ (resnet18 from
scratch, its default 256-channel decoder, output stride 16) on all masks. This benchmark does
exactly that through boxseg's own trainer (`train_primary`: the same crops, augmentation,
AdamW, poly schedule, steps and batch; only the network differs), then scores it in-domain
(val, W's footage) and on the unseen drive, as camvid_table.py scores its rows. Rows are
cached in OUT/rows/peer_smp_s{seed}.json beside camvid_table's (same OUT: same data copy and
split), so the table's `full` row and the peer's can be read side by side.

boxseg's own network with the field's default width is camvid_table.py's `full` row with
`--channels 256` (give it its own --out: its rows would otherwise share names).

    pip install segmentation-models-pytorch      # not a boxseg dependency
    python benchmarks/peer_ceiling.py ../shared/data/camvid --out camvid-table --seeds 0,1,2 \\
        --threads 1 --json peer.json

(RUN/model.pt of a peer run holds smp's weights under boxseg's metadata: boxseg cannot load it;
the scores are taken from the network in memory. Since issue 40 boxseg trains smp's networks
itself: `camvid_table.py --arch deeplabv3plus --encoder resnet18 --channels 256` gives every
row with smp's DeepLabV3+, loadable checkpoints included; this script stays as the record of
the peer rows it made, padded by reflection where boxseg's --arch pads with zeros.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_table import cached_row, footage_split, resized_copy, scores  # noqa: E402

import boxseg.train_primary as train_primary_module  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec  # noqa: E402
from boxseg.engine import TrainConfig, resolve_device  # noqa: E402
from boxseg.evaluate import evaluate_model  # noqa: E402
from boxseg.models import ModelSpec  # noqa: E402
from boxseg.primary_options import PrimaryOptions  # noqa: E402
from boxseg.train_primary import primary_meta, train_primary  # noqa: E402


class PeerNet(nn.Module):
    """smp's DeepLabV3+ with boxseg's forward signature (image, boxes=None); inputs padded
    to a multiple of 16 (smp requires it) and the output cropped back."""

    def __init__(self, num_classes: int, decoder_channels: int = 256):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=num_classes,
                                     encoder_output_stride=16,
                                     decoder_channels=decoder_channels)  # fmt: skip
        self.pretrained = None  # (what say_pretrained reads)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2:]
        pad = (0, -w % 16, 0, -h % 16)
        out = self.net(F.pad(image, pad, mode="reflect") if any(pad) else image)
        return out[..., :h, :w]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("camvid-table"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--unseen-video", default="0006R0")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--decoder-channels", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads (several processes)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        raise SystemExit("pip install segmentation-models-pytorch first (not a boxseg "
                         "dependency)") from None  # fmt: skip
    data = resized_copy(args.data, args.out / "data", ["train", "val"], args.scale)
    train_split, unseen = "train", None
    if args.unseen_video:
        train_split, unseen = footage_split(data, "train", args.unseen_video)
    ds = open_dataset(data)
    dev = resolve_device(args.device)
    built: dict[str, nn.Module] = {}

    def build(spec, num_classes, box_channels=None, pretrained="none", box_path=None):
        built["net"] = PeerNet(num_classes, args.decoder_channels)
        return built["net"]

    train_primary_module.build_model = build  # the only change: the network
    spec = ModelSpec("resnet18", 16, args.decoder_channels, args.decoder_channels)

    def fit(seed: int) -> dict:
        cfg = TrainConfig(iters=args.iters, batch_size=args.batch_size, crop=args.crop,
                          scale_min=0.75, scale_max=1.25, lr=args.lr, optimizer="adamw",
                          seed=seed, device=args.device, checkpoint_every=250,
                          resume=True)  # fmt: skip
        split = SplitSpec(train_split, len(ds.ids(train_split)), 0)  # all masks: the ceiling
        run = args.out / "runs" / f"peer_smp_s{seed}"
        r = train_primary(PrimaryOptions(data, run, split, spec, cfg, val_split="val"), quiet=True)
        net = built["net"].eval()
        meta = primary_meta(spec, ds, "f_only", None, 0)
        result = scores(r) | {
            "steps": args.iters,
            "network": "smp DeepLabV3Plus resnet18",
            "parameters": sum(p.numel() for p in net.parameters()),
        }
        if unseen:
            result["unseen"] = scores(evaluate_model(net, meta, ds, unseen, dev, quiet=True))
        return result

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {s: cached_row(args.out / "rows", f"peer_smp_s{s}", lambda s=s: fit(s),
                          lambda r: f"val {r['miou']:.2f}") for s in seeds}  # fmt: skip
    summary = {}
    for key, get in (("in_domain", lambda r: r["miou"]), ("unseen", lambda r: r["unseen"]["miou"])):
        values = [get(r) for r in rows.values() if key == "in_domain" or "unseen" in r]
        if values:
            summary[key] = {
                "mean": statistics.mean(values),
                "values": values,
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
