"""The folder layout: your own images, with boxes as annotation tools export them (docs/formats.md).

    DATA/classes.txt       class names, one a line (index = line number); a class named
                           `background` is the background class (YOLO: or data.yaml `names`)
    DATA/images/<stem>.jpg|.png
    DATA/masks/<stem>.png  optional class-index PNG per image (255 void)
    DATA/<split>.txt       split lists of image stems (train.txt, val.txt, ...)
and exactly one box source:
    DATA/boxes.json        COCO instances JSON: images (id, file_name), categories (id, name),
                           annotations (image_id, category_id, bbox [x, y, w, h], segmentation)
    DATA/labels/<stem>.txt YOLO: `class cx cy w h` lines, normalised (box_files.py)
    DATA/annotations/<stem>.xml  PASCAL VOC XML, as LabelImg and CVAT write it

An image's mask is masks/<stem>.png; failing that (COCO only), when every one of its
annotations has a segmentation, the polygons are drawn with OpenCV (larger objects first; RLE
needs pycocotools); otherwise it has no mask, and it is a weak image. Without --num-full or
--full-list, F is the images of the split that have a mask and W the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from boxseg.data.box_files import read_voc_xml, read_yaml_names, read_yolo
from boxseg.data.boxes import BoxSpec, fit_boxes, keep_classes
from boxseg.data.reader import ReaderBase, check_mask, find_image, read_class_names, read_id_list
from boxseg.data.sample import VOID
from boxseg.data.validate import image_size, turned_hint
from boxseg.errors import BoxsegError
from boxseg.io import read_label_png, read_text

BOXES_FILE = "boxes.json"
BOX_SOURCES = {"coco": "boxes.json", "yolo": "labels/", "voc_xml": "annotations/"}


def box_sources(root: Path) -> list[str]:
    """The box sources present in a folder dataset (one is allowed)."""

    def present(name: str) -> bool:
        return (root / name[:-1]).is_dir() if name.endswith("/") else (root / name).is_file()

    return [k for k, name in BOX_SOURCES.items() if present(name)]


def is_folder(root: Path) -> bool:
    return (root / "images").is_dir() and bool(box_sources(root))


@dataclass(frozen=True)
class CocoBoxes:
    """What boxes.json holds, indexed by image stem."""

    boxes: dict[str, list[dict]] = field(default_factory=dict)  # stem -> annotations
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # stem -> (height, width)


@lru_cache(maxsize=4)
def read_coco(path: Path, mtime: float, class_names: tuple[str, ...]) -> CocoBoxes:
    """Parse boxes.json once (per file version): annotations by image stem, category names
    mapped to class indices, with a clear error for anything malformed."""
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise BoxsegError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= doc.keys():
        raise BoxsegError(f"{path}: a COCO instances file needs images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc[key], list) or not all(isinstance(x, dict) for x in doc[key]):
            raise BoxsegError(f"{path}: '{key}' must be a list of objects")
    cats: dict = {}
    for n, c in enumerate(doc["categories"]):
        if "id" not in c or not isinstance(c.get("name"), str):
            raise BoxsegError(f"{path}: category {n} needs an 'id' and a 'name'")
        if c["name"] not in class_names:
            raise BoxsegError(
                f"{path}: unknown class name '{c['name']}' "
                f"(classes.txt has {', '.join(class_names)})"
            )
        if _key(c["id"]) in cats:
            raise BoxsegError(f"{path}: category id {c['id']!r} used twice")
        cats[_key(c["id"])] = class_names.index(c["name"])
    stems, out = {}, CocoBoxes()
    for n, im in enumerate(doc["images"]):
        if "id" not in im or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise BoxsegError(f"{path}: image {n} needs an 'id' and a 'file_name'")
        if _key(im["id"]) in stems:
            raise BoxsegError(f"{path}: image id {im['id']!r} used twice")
        stem = Path(im["file_name"]).stem
        if stem in out.boxes:
            raise BoxsegError(f"{path}: two images named {stem} (file names must be unique)")
        stems[_key(im["id"])] = stem
        out.boxes[stem] = []
        if "height" in im and "width" in im:
            try:
                out.sizes[stem] = (int(im["height"]), int(im["width"]))
            except (TypeError, ValueError) as e:
                raise BoxsegError(
                    f"{path}: image {stem}: height and width must be whole numbers"
                ) from e
    for a in doc["annotations"]:
        stem = stems.get(_key(a.get("image_id")))
        if stem is None:
            raise BoxsegError(
                f"{path}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}"
            )
        if _key(a.get("category_id")) not in cats:
            raise BoxsegError(
                f"{path}: annotation {a.get('id')} has unknown category {a.get('category_id')}"
            )
        out.boxes[stem].append(a | {"label": cats[_key(a["category_id"])]})
    return out


def _key(value) -> str:
    """A COCO id as a dictionary key (ids of any JSON type; lists and objects made hashable)."""
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class FolderDataset(ReaderBase):
    root: Path
    class_names: tuple[str, ...]
    background: int | None
    layout: str = "folder"
    void_value: int = 255
    box_source: str = "coco"  # coco (boxes.json), yolo (labels/) or voc_xml (annotations/)
    boxes_from_masks = False  # boxes come from the box files
    masks_mark_full = True  # the images with a mask are F unless told otherwise

    @property
    def coco(self) -> CocoBoxes:
        path = self.root / BOXES_FILE
        return read_coco(path, path.stat().st_mtime, self.class_names)

    def has_split(self, split: str) -> bool:
        return (self.root / f"{split}.txt").is_file()

    def ids(self, split: str) -> list[str]:
        path = self.root / f"{split}.txt"
        if not path.is_file():
            raise BoxsegError(f"{path}: no such split list")
        return read_id_list(path)

    def image_path(self, split: str, image_id: str) -> Path:
        path = find_image(self.root / "images", image_id)
        if path is None:
            raise BoxsegError(f"{self.root / 'images' / image_id}.jpg|.png: image not found")
        return path

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.root / "masks" / f"{image_id}.png"

    def has_mask(self, split: str, image_id: str) -> bool:
        if self.mask_path(split, image_id).is_file():
            return True
        if self.box_source != "coco":
            return False
        anns = self.coco.boxes.get(image_id, [])
        return bool(anns) and all(a.get("segmentation") for a in anns)

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        path = self.mask_path(split, image_id)
        if path.is_file():
            mask = read_label_png(path)
        elif self.has_mask(split, image_id):
            mask = self._draw_segmentations(image_id)
        else:
            raise BoxsegError(f"{path}: no mask for this image (it is a weak image)")
        return check_mask(mask, path, self.num_classes)

    def _draw_segmentations(self, image_id: str) -> np.ndarray:
        """A class mask from the image's COCO segmentations, larger objects drawn first."""
        h, w = self.coco.sizes.get(image_id) or image_size(self.image_path("", image_id))
        mask = np.full((h, w), VOID if self.background is None else self.background, np.uint8)
        anns = sorted(self.coco.boxes[image_id], key=lambda a: -a["bbox"][2] * a["bbox"][3])
        for a in anns:
            seg = a["segmentation"]
            if isinstance(seg, dict):  # RLE
                try:
                    from pycocotools import mask as rle
                except ImportError as e:
                    msg = f"{self.root / BOXES_FILE}: image {image_id} has an RLE mask"
                    raise BoxsegError(f"{msg}; pip install pycocotools to decode it") from e
                mask[
                    rle.decode(
                        rle.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
                    ).astype(bool)
                ] = a["label"]
                continue
            polys = [
                np.round(np.array(p, np.float64).reshape(-1, 2)).astype(np.int32)
                for p in seg
                if len(p) >= 6
            ]
            cv2.fillPoly(mask, polys, int(a["label"]))
        return mask

    def read_boxes(self, split: str, image_id: str, spec: BoxSpec, mask=None):
        """The image's boxes from its box source, as xyxy pixels; `spec.classes` filters them."""
        if self.box_source == "coco":
            return self._coco_boxes(split, image_id, spec)
        if self.box_source == "yolo":
            h, w = image_size(self.image_path(split, image_id))
            path = self.root / "labels" / f"{image_id}.txt"
            boxes, labels = read_yolo(path, self.num_classes, h, w)
        else:
            path = self.root / "annotations" / f"{image_id}.xml"
            boxes, labels = read_voc_xml(path, self.class_names)
            h, w = image_size(self.image_path(split, image_id))
            boxes = fit_boxes(boxes, h, w, path)
        return keep_classes(boxes, labels, spec.classes)

    def _coco_boxes(self, split: str, image_id: str, spec: BoxSpec):
        """The image's boxes from boxes.json (xywh -> xyxy), checked against the image size. A
        box of zero width or height (a click) is kept as the file has it: it covers no pixel,
        so every consumer leaves it out and the stage's check counts it (`pixel_boxes`)."""
        path = self.root / BOXES_FILE
        if image_id not in self.coco.boxes:
            raise BoxsegError(f"{path}: image {image_id} is not in the file")
        h, w = image_size(self.image_path(split, image_id))
        said = self.coco.sizes.get(image_id)
        if said is not None and said != (h, w):
            image = self.image_path(split, image_id)
            raise BoxsegError(
                f"{path}: image {image_id} is {said[1]}x{said[0]} there, but "
                f"{image} is {w}x{h} (boxes made for other copies of the "
                f"images?){turned_hint(image, said, (h, w))}"
            )
        boxes, labels = [], []
        for a in self.coco.boxes[image_id]:
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError) as e:
                raise BoxsegError(
                    f"{path}: annotation {a.get('id')} of {image_id} has no bbox [x, y, w, h]"
                ) from e
            where = f"{path}: box {[x, y, bw, bh]} of {image_id} (annotation {a.get('id')})"
            if not np.isfinite([x, y, bw, bh]).all():
                raise BoxsegError(f"{where} is not finite")
            if bw < 0 or bh < 0:
                raise BoxsegError(f"{where} has negative size")
            if x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
                raise BoxsegError(f"{where} lies outside the {w}x{h} image")
            if spec.classes is None or a["label"] in spec.classes:
                boxes.append([max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)])
                labels.append(a["label"])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def check_box_file_names(root: Path, source: str) -> None:
    """YOLO / VOC XML box files are found by their image's stem: if none of them matches an
    image, every image would silently have no boxes."""
    folder, suffix = ("labels", ".txt") if source == "yolo" else ("annotations", ".xml")
    files = sorted(p.stem for p in (root / folder).iterdir() if p.suffix.lower() == suffix)
    if not files:
        return
    images = {p.stem for p in (root / "images").iterdir()}
    if not images & set(files):
        raise BoxsegError(
            f"{root / folder}: none of its {len(files)} {suffix} files is named "
            f"after an image in {root / 'images'} (first: {files[0]}{suffix}); a "
            "box file takes its image's name"
        )


def open_folder(root: Path) -> FolderDataset:
    sources = box_sources(root)
    if len(sources) > 1:
        found = " and ".join(f"{BOX_SOURCES[k]} ({k})" for k in sources)
        raise BoxsegError(f"{root}: two box sources, {found}; keep exactly one")
    source = sources[0]
    if source != "coco":
        check_box_file_names(root, source)
    path = root / "classes.txt"
    if path.is_file():
        return FolderDataset(root, *read_class_names(path), box_source=source)
    if source == "yolo" and (root / "data.yaml").is_file():
        names = tuple(read_yaml_names(root / "data.yaml"))
        background = names.index("background") if "background" in names else None
        return FolderDataset(root, names, background, box_source=source)
    raise BoxsegError(
        f"{path}: the folder layout needs a classes file (one name a line"
        + ("; or data.yaml with names" if source == "yolo" else "")
        + ")"
    )
