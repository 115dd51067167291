"""Box files as labelling tools and detectors write them: YOLO txt and PASCAL VOC XML.

Both parsers return (N x 4 float32 xyxy boxes in pixels, x2/y2 exclusive; N int64 labels) and
name the file and line of anything malformed in one line.

- YOLO (Ultralytics, Roboflow, CVAT): one `class cx cy w h` line per box, normalised to [0, 1]
  by the image's width and height; class ids index the class names (classes.txt, or data.yaml
  `names`). An image without a label file has no boxes (YOLO's negative images).
- VOC XML (LabelImg, CVAT, PASCAL VOC's Annotations/): `object` elements with a `name` and a
  `bndbox` of 1-based inclusive corners xmin, ymin, xmax, ymax.
"""

from __future__ import annotations

import xml.parsers.expat
from pathlib import Path

import numpy as np

from boxseg.errors import BoxsegError
from boxseg.io import read_text

TOLERANCE = 1e-3  # normalised YOLO coordinates may overshoot [0, 1] by rounding


def _boxes(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def read_yolo(path: Path, num_classes: int, height: int, width: int):
    """Boxes of a YOLO label file for a height x width image (none if there is no file)."""
    path = Path(path)
    if not path.is_file():
        return _boxes([], [])
    boxes, labels = [], []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields or line.lstrip().startswith("#"):
            continue
        where = f"{path}: line {n}"
        if len(fields) != 5:
            raise BoxsegError(
                f"{where}: {len(fields)} columns; YOLO boxes are "
                "'class cx cy w h' (polygons are not boxes)"
            )
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as e:
            raise BoxsegError(f"{where}: not numbers: '{line.strip()}'") from e
        if not 0 <= cls < num_classes:
            raise BoxsegError(
                f"{where}: class id {cls} unknown (the class names have "
                f"{num_classes}: 0..{num_classes - 1})"
            )
        values = np.array([cx, cy, w, h])
        # w or h 0 (a click) passes: a box covering no pixel, which every consumer leaves out
        # and the stage's check counts (data.boxes.pixel_boxes)
        if not np.isfinite(values).all() or w < 0 or h < 0:
            raise BoxsegError(
                f"{where}: box {cx:g} {cy:g} {w:g} {h:g} has a negative or non-finite size"
            )
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x1, y1) < -TOLERANCE or max(x2, y2) > 1 + TOLERANCE:
            raise BoxsegError(
                f"{where}: box {cx:g} {cy:g} {w:g} {h:g} leaves the image "
                "(YOLO coordinates are fractions of its size, 0..1)"
            )
        boxes.append(
            [max(x1, 0) * width, max(y1, 0) * height, min(x2, 1) * width, min(y2, 1) * height]
        )
        labels.append(cls)
    return _boxes(boxes, labels)


def _xml_objects(path: Path) -> list[dict]:
    """The `object` elements of a VOC XML file: name, bndbox corners and the line each starts
    on (expat, so that errors can name lines). `part` elements inside an object (VOC's person
    layout: head, hand, foot) are not objects, and their boxes are not the object's."""
    objects: list[dict] = []
    stack: list[str] = []
    text: list[str] = []
    parser = xml.parsers.expat.ParserCreate()

    def start(tag, attrs):
        stack.append(tag)
        text.clear()
        if tag == "object":
            objects.append({"line": parser.CurrentLineNumber, "box": {}})

    def end(tag):
        value = "".join(text).strip()
        text.clear()
        stack.pop()
        if not objects or "object" not in stack + [tag]:
            return
        if tag == "name" and stack[-1] == "object":
            objects[-1]["name"] = value
        elif tag in ("xmin", "ymin", "xmax", "ymax") and stack[-2:] == ["object", "bndbox"]:
            # (the object's own box: a <part>'s bndbox (head, hand, foot) is not the object's)
            objects[-1]["box"][tag] = (value, parser.CurrentLineNumber)

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: box annotation not found") from e
    except OSError as e:
        raise BoxsegError(f"{path}: cannot read ({e.strerror or e})") from e
    except xml.parsers.expat.ExpatError as e:
        raise BoxsegError(
            f"{path}: line {e.lineno}: not valid XML ({xml.parsers.expat.ErrorString(e.code)})"
        ) from e
    return objects


def read_voc_xml(path: Path, class_names: tuple[str, ...] | list[str]):
    """Boxes of a VOC XML file (1-based inclusive corners -> 0-based xyxy, x2/y2 exclusive)."""
    path = Path(path)
    boxes, labels = [], []
    for obj in _xml_objects(path):
        name = obj.get("name", "")
        where = f"{path}: line {obj['line']}: object '{name}'"
        if name not in class_names:
            raise BoxsegError(
                f"{where}: unknown class name (the class names are {', '.join(class_names)})"
            )
        corners = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            value, line = obj["box"].get(key, ("", obj["line"]))
            try:
                corners.append(float(value))
            except ValueError as e:
                raise BoxsegError(
                    f"{path}: line {line}: object '{name}': {key} '{value}' is not a number"
                ) from e
        x1, y1, x2, y2 = corners
        if not np.isfinite(corners).all() or x2 < x1 or y2 < y1 or min(x1, y1) < 0:
            raise BoxsegError(f"{where}: bad box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(list(class_names).index(name))
    return _boxes(boxes, labels)


def read_yaml_names(path: Path) -> list[str]:
    """The class names of an Ultralytics data.yaml (`names`: a list, or a dict id -> name)."""
    try:
        import yaml
    except ImportError as e:
        raise BoxsegError(
            f"{path}: reading it needs PyYAML (pip install pyyaml); or list the "
            "class names in classes.txt, one a line"
        ) from e
    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise BoxsegError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from e
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        keys = list(names)
        if not all(type(k) is int for k in keys) or sorted(keys) != list(range(len(keys))):
            raise BoxsegError(
                f"{path}: names must map the integer ids 0..{len(keys) - 1} to "
                f"names (found keys {', '.join(map(repr, keys[:5]))})"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BoxsegError(f"{path}: no class names (a 'names' list or id: name mapping)")
    names = [n.strip() for n in names]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BoxsegError(f"{path}: duplicate class name '{dup[0]}'")
    return names
