"""The ancillary logits store: a chunked zarr v3 group, one compressed chunk per weak image.

Layout (a zarr v3 group at any local path or zarr store URL):
- `logits`: (N, K, Hc/s, Wc/s): image i's logits, pooled to stride s, in the top-left
  corner of a canvas big enough for the largest image; one chunk per image (random access).
  float16, or with dtype int8 8-bit codes of log-probabilities (see `encode_int8`).
- `sizes`:  int32 (N, 2): each image's true (height, width) in pixels.
- `done`:   bool (N,): set only after image i's chunk is written, so a killed run resumes.
- attributes: format, class_names, image_ids, stride, dtype, checkpoint_sha256, dataset,
  boxseg_version.

`location` is a local path, a `file://` URL, or any URL zarr opens through fsspec (`memory://`,
`s3://` with s3fs installed, ...).

Logits at stride s are the mean over each s x s pixel block; `upsample_logits` maps them back to
pixel resolution with bilinear interpolation (half-pixel centres), which puts each stored cell
back at the centre of its block.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from zarr.codecs import ZstdCodec

from boxseg import __version__
from boxseg.errors import BoxsegError

FORMAT = "boxseg-logits-v1"
DTYPES = ("float16", "int8")
INT8_RANGE = 16.0  # int8 codes cover log-probabilities in [-16, 0]; below is clamped


NET_METHODS = ("anc", "primary")  # stores written by a net: no void cells (the others paint)
INT8_STEPS = 254  # codes 0..254 hold log-probabilities; 255 marks a void pixel (NaN logits)


def encode_int8(logits: torch.Tensor) -> np.ndarray:
    """KxHxW logits -> uint8 codes of log-probabilities: round(-log_softmax * 254 / 16).

    Softmax ignores a per-pixel shift, so log-probabilities keep all the information in the
    logits; they lie in (-inf, 0], and classes below -16 (probability < 1.2e-7) are clamped.
    The step is 16/254 = 0.063 nats, so a decoded logit is within 0.032 of the original and
    each probability within about 3% of its value (docs/store.md). NaN (void) -> code 255."""
    logp = torch.log_softmax(logits.float(), dim=0).clamp_min(-INT8_RANGE)
    codes = torch.round(-logp * (INT8_STEPS / INT8_RANGE)).nan_to_num(255)
    return codes.to(torch.uint8).numpy()


def decode_int8(codes: np.ndarray) -> torch.Tensor:
    """uint8 codes -> float32 log-probabilities (usable as logits); NaN where void."""
    out = codes.astype(np.float32) * (-INT8_RANGE / INT8_STEPS)
    out[codes == 255] = np.nan
    return torch.from_numpy(out)


def local_path(location: str | Path) -> Path | None:
    """The filesystem path of a local location (a path or file:// URL), else None."""
    location = str(location)
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    return None if "://" in location else Path(location)


def zarr_location(location: str | Path) -> str:
    """What to hand zarr: local paths (file:// URLs too) as plain paths, other URLs as they are."""
    path = local_path(location)
    return str(path) if path is not None else str(location)


def pool_logits(logits: torch.Tensor, stride: int, void_free: bool = False) -> torch.Tensor:
    """KxHxW (or NxKxHxW) -> Kx ceil(H/s) x ceil(W/s): block means (edge blocks padded by
    replication).

    Void pixels (NaN logits) are left out of their block's mean; a block is void (NaN) only
    when all of its pixels are. `void_free`: the caller knows there is none (no host sync)."""
    if stride == 1:
        return logits
    h, w = logits.shape[-2:]
    ph, pw = -h % stride, -w % stride
    x = logits if logits.dim() == 4 else logits[None]
    x = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    void = None if void_free else torch.isnan(x[:, :1])
    if void is None or not void.any():
        out = F.avg_pool2d(x, stride)
    else:
        weight = F.avg_pool2d((~void).float(), stride)
        mean = F.avg_pool2d(x.nan_to_num(0.0), stride) / weight.clamp_min(1e-6)
        out = torch.where(weight > 0, mean, torch.nan)
    return out if logits.dim() == 4 else out[0]


def upsample_logits(
    logits: torch.Tensor, stride: int, height: int, width: int, void_free: bool = False
) -> torch.Tensor:
    """Inverse of `pool_logits`: Kxhxw (or NxKxhxw) at stride s -> KxHxW at pixel resolution.

    With void cells (NaN), values are interpolated from the non-void neighbours only
    (normalised interpolation), and a pixel is void where void cells outweigh the others, so
    a void region keeps its size instead of spreading by a stride. `void_free`: the caller
    knows there is none (no host sync)."""
    if stride == 1:
        return logits[..., :height, :width]
    h, w = logits.shape[-2:]
    x = logits if logits.dim() == 4 else logits[None]

    def up(t: torch.Tensor) -> torch.Tensor:
        size = (h * stride, w * stride)
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    void = None if void_free else torch.isnan(x[:, :1])
    if void is None or not void.any():
        out = up(x)[..., :height, :width]
    else:
        weight = up((~void).float())
        out = up(x.nan_to_num(0.0)) / weight.clamp_min(1e-6)
        out = torch.where(weight >= 0.5, out, torch.nan)[..., :height, :width]
    return out if logits.dim() == 4 else out[0]


def as_stored(
    logits: torch.Tensor, stride: int, dtype: str, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """What a store of this stride and dtype gives back (`read_full`) for pixel-resolution
    logits (KxHxW, or a batch NxKxHxW; no void pixels): pooled to the stride, the
    box-constraint `bias` pooled by its maximum and added (as gen-logits does), rounded to the
    dtype, resampled to HxW. The conv merger's F inputs are made this way in store mode, so it
    learns on the kind of input it corrects on W; a whole batch at once, without host syncs
    (but for int8, whose codes are made on the CPU)."""
    from boxseg.box_constraint import pool_bias  # (box_constraint is above the store)

    h, w = logits.shape[-2:]
    pooled = pool_logits(logits.float(), stride, void_free=True)
    if bias is not None:
        pooled = pooled + pool_bias(bias.to(pooled.device), stride)
    if dtype == "int8":
        per_image = pooled if pooled.dim() == 4 else pooled[None]
        codes = [decode_int8(encode_int8(x.cpu())) for x in per_image]
        pooled = torch.stack(codes).to(logits.device).reshape(pooled.shape)
    else:
        pooled = pooled.half().float()
    return upsample_logits(pooled, stride, h, w, void_free=True)


class LogitsStore:
    """Read and write access to a logits store; see the module docstring for the layout."""

    def __init__(self, group: zarr.Group, location: str):
        self.group = group
        self.location = location
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise BoxsegError(f"{location}: not a boxseg logits store")
        self.class_names: list[str] = list(attrs["class_names"])
        self.image_ids: list[str] = list(attrs["image_ids"])
        self.stride: int = int(attrs["stride"])
        self.dtype: str = attrs.get("dtype", "float16")
        self.attrs = attrs
        # box-fill, GrabCut and SAM stores mark unlabelled pixels void (NaN); a net's never do
        self.may_hold_void = attrs.get("method", "anc") not in NET_METHODS
        self._index = {k: i for i, k in enumerate(self.image_ids)}
        self.logits = group["logits"]
        self.sizes = np.asarray(group["sizes"][:])  # small: kept in memory
        self.done = group["done"]
        self._known_done = self.done_mask()  # saves a read per image on the training hot path

    @staticmethod
    def create(
        location: str | Path,
        image_ids: list[str],
        sizes: np.ndarray,
        class_names: list[str],
        stride: int,
        attributes: dict,
        dtype: str = "float16",
    ) -> LogitsStore:
        """A new, empty store (all done flags False) sized for the given images."""
        if stride < 1:
            raise BoxsegError(f"--stride {stride}: must be a positive integer")
        if dtype not in DTYPES:
            raise BoxsegError(f"--dtype {dtype}: choose float16 or int8")
        k = len(class_names)
        hc = math.ceil(int(sizes[:, 0].max()) / stride)
        wc = math.ceil(int(sizes[:, 1].max()) / stride)
        attrs = {
            "format": FORMAT,
            "class_names": list(class_names),
            "image_ids": list(image_ids),
            "stride": stride,
            "dtype": dtype,
            "boxseg_version": __version__,
            **attributes,
        }
        try:  # the attributes (with `format`) go in last: a store killed while being
            group = zarr.open_group(zarr_location(location), mode="w")  # is seen as unfinished
        except OSError as e:
            raise BoxsegError(f"{location}: cannot create the store ({e})") from e
        n = len(image_ids)
        group.create_array(
            "logits",
            shape=(n, k, hc, wc),
            chunks=(1, k, hc, wc),
            dtype="float16" if dtype == "float16" else "uint8",
            compressors=ZstdCodec(level=3),
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},  # one file per image, no dirs
        )
        group.create_array("sizes", data=np.asarray(sizes, dtype=np.int32))
        group.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False,
                           chunk_key_encoding={"name": "default", "separator": "."})  # fmt: skip
        group.attrs.update(attrs)
        return LogitsStore(group, str(location))

    @staticmethod
    def state(location: str | Path) -> str:
        """'complete' (created, maybe not yet filled), 'unfinished' (killed while being
        created: safe to create anew) or 'foreign' (some other zarr data: never overwritten)."""
        try:
            group = zarr.open_group(zarr_location(location), mode="r")
        except (FileNotFoundError, ValueError, KeyError, OSError):
            return "foreign"
        if group.attrs.get("format") == FORMAT:
            return "complete"
        ours = not dict(group.attrs) and set(group.keys()) <= {"logits", "sizes", "done"}
        return "unfinished" if ours else "foreign"

    @staticmethod
    def open(location: str | Path, mode: str = "r") -> LogitsStore:
        """Open an existing store; a clear error if there is none or it is not ours."""
        location = str(location)
        path = local_path(location)
        if path is not None and not (path / "zarr.json").is_file():
            raise BoxsegError(f"{location}: no logits store here")
        try:
            group = zarr.open_group(zarr_location(location), mode=mode)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise BoxsegError(f"{location}: cannot open the logits store ({e})") from e
        return LogitsStore(group, location)

    def __len__(self) -> int:
        return len(self.image_ids)

    def index(self, image_id: str) -> int:
        return self._index[image_id]

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=bool)

    def write(self, i: int, logits: torch.Tensor) -> None:
        """Store image i's logits (KxHxW at pixel resolution, or already pooled to the stride)."""
        self.write_block(i, [logits])

    def write_block(self, start: int, logits: list[torch.Tensor]) -> None:
        """Store images start, start+1, ... in one call (zarr writes their chunks concurrently),
        then set their done flags."""
        canvas = np.zeros((len(logits), *self.logits.shape[1:]), dtype=self.logits.dtype)
        for k, x in enumerate(logits):
            i = start + k
            h, w = (int(v) for v in self.sizes[i])
            hs, ws = math.ceil(h / self.stride), math.ceil(w / self.stride)
            if x.shape[-2:] == (h, w):
                x = pool_logits(x.float(), self.stride)
            if tuple(x.shape[-2:]) != (hs, ws):
                raise ValueError(f"logits of shape {tuple(x.shape)} for an image of {h}x{w}")
            x = x.detach().cpu()
            if self.dtype == "int8":
                canvas[k, :, :hs, :ws] = encode_int8(x)
            else:
                canvas[k, :, :hs, :ws] = x.numpy().astype(np.float16)
        end = start + len(logits)
        try:
            self.logits[start:end] = canvas
            self.done[start:end] = True  # only after the chunks are written
        except OSError as e:  # disk full and the like: done flags stay unset, so a rerun resumes
            first, why = self.image_ids[start], e.strerror or e
            raise BoxsegError(f"{self.location}: cannot write image {first} ({why}); "
                              "free space and run again to resume") from e  # fmt: skip
        self._known_done[start:end] = True

    def read(self, i: int, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        """Image i's stored logits at the store's stride (Kx ceil(H/s) x ceil(W/s), float32),
        or just the given rows and columns of its cells (`transforms.cells_needed`)."""
        if not (self._known_done[i] or bool(self.done[i])):
            raise BoxsegError(
                f"{self.location}: image {self.image_ids[i]} has no logits yet "
                "(an interrupted gen-logits run: run it again to finish)"
            )
        h, w = (int(v) for v in self.sizes[i])
        hs, ws = math.ceil(h / self.stride), math.ceil(w / self.stride)
        rows, cols = rows or slice(0, hs), cols or slice(0, ws)
        chunk = self.logits[i, :, rows.start : min(rows.stop, hs), cols.start : min(cols.stop, ws)]
        if self.dtype == "int8":
            return decode_int8(chunk)
        return torch.from_numpy(chunk.astype(np.float32))

    def read_full(self, i: int) -> torch.Tensor:
        """Image i's logits resampled to pixel resolution (KxHxW float32)."""
        h, w = (int(v) for v in self.sizes[i])
        return upsample_logits(self.read(i), self.stride, h, w)

    def check_matches(self, class_names: list[str], image_ids: list[str]) -> None:
        """Refuse a store made for other classes (or class order) or another weak set."""
        if list(class_names) != self.class_names:
            raise BoxsegError(
                f"{self.location}: the store's classes ({', '.join(self.class_names)}) differ "
                f"from the dataset's ({', '.join(class_names)})"
            )
        missing = [i for i in image_ids if i not in self._index]
        if missing:
            raise BoxsegError(
                f"{self.location}: {len(missing)} weak images of this split are not in the store "
                f"(first: {missing[0]}); was it made with other split options?"
            )
        extra = sorted(set(self.image_ids) - set(image_ids))
        if extra:
            raise BoxsegError(
                f"{self.location}: {len(extra)} images in the store are not weak images of this "
                f"split (first: {extra[0]}); was it made with other split options?"
            )
        done = self.done_mask()
        not_done = [i for i in image_ids if not done[self._index[i]]]  # (in order of the split)
        if not_done:
            raise BoxsegError(
                f"{self.location}: {len(not_done)} weak images have no logits yet (first: "
                f"{not_done[0]}); the gen-logits run was interrupted: run it again to finish"
            )


class InMemoryLogits:
    """Soft-label logits held in RAM (float32, pixel resolution), with the reading interface
    of `LogitsStore`: train-primary takes either. Benchmarks use it as the no-storage baseline;
    Python users can train from logits they made themselves."""

    def __init__(self, logits: dict[str, torch.Tensor], class_names: list[str]):
        self.image_ids = list(logits)
        self.class_names = list(class_names)
        self._logits = [logits[i].float() for i in self.image_ids]
        self._index = {k: i for i, k in enumerate(self.image_ids)}
        self.sizes = np.array([x.shape[-2:] for x in self._logits], dtype=np.int32)
        self.stride, self.dtype, self.location = 1, "float32", "<logits in memory>"
        self.attrs: dict = {}
        self.may_hold_void = False  # (NaN-free logits expected)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __str__(self) -> str:
        return self.location

    def index(self, image_id: str) -> int:
        return self._index[image_id]

    def done_mask(self) -> np.ndarray:
        return np.ones(len(self), dtype=bool)

    def read(self, i: int, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        return self._logits[i][:, rows or slice(None), cols or slice(None)]

    def read_full(self, i: int) -> torch.Tensor:
        return self._logits[i]

    check_matches = LogitsStore.check_matches
