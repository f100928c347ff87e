"""The NIH ChestX-ray14 layout: label table, image files, patient splits, checks.

One input format for real and demo data:
  DIR/Data_Entry_2017.csv (or its 2020 revision), DIR/images/*.png (or NIH's images_001/images/ shards),
  optional DIR/train_val_list.txt and DIR/test_list.txt for the official split.
No torch here: `chexui data check` runs without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine.errors import DataError
from engine.labels import LABELS, NO_FINDING

CSV_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SPLITS = ("train", "val", "test")


@dataclass
class NIHIndex:
    root: Path
    csv: Path
    names: np.ndarray  # image file names, CSV order
    labels: np.ndarray  # uint8 [N, 14] in LABELS order; "No Finding" = all zeros
    patients: np.ndarray  # int64 patient ids
    views: np.ndarray  # "PA"/"AP"/... or "" when the column is absent
    paths: list[Path] = field(default_factory=list)  # resolved image paths ([] when not checked)

    def __len__(self) -> int:
        return len(self.names)


def find_csv(root: Path) -> Path:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root / CSV_NAMES[0]}: not found (an NIH-layout dataset needs "
        "Data_Entry_2017.csv and images/; `chexui data demo OUT` makes one)"
    )


def read_labels(csv: Path) -> pd.DataFrame:
    """Read and check the label table. Returns columns name, labels (list), patient, view."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv}: empty file (expected a header and one row per image)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{csv}: cannot parse as CSV: {e}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; NIH columns are {list(REQUIRED_COLUMNS)}")
    if len(df) == 0:
        raise DataError(f"{csv}: no image rows")
    names = df["Image Index"].str.strip()
    # CSV row numbers as a user sees them in an editor: header is line 1.
    dup = names.duplicated(keep="first")
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        first = int(np.argmax((names == names.iloc[i]).to_numpy()))
        raise DataError(f"{csv}: row {i + 2}: image '{names.iloc[i]}' listed twice (first at row {first + 2})")
    empty = names == ""
    if empty.any():
        raise DataError(f"{csv}: row {int(np.argmax(empty.to_numpy())) + 2}: empty 'Image Index'")
    # "Mass | Nodule" (spaces around the separator) means what NIH writes as "Mass|Nodule"
    onehot = df["Finding Labels"].str.replace(r"\s*\|\s*", "|", regex=True).str.strip().str.get_dummies(sep="|")
    onehot.columns = [c.strip() for c in onehot.columns]
    unknown = sorted(set(onehot.columns) - set(LABELS) - {NO_FINDING})
    if unknown:
        bad = unknown[0]
        i = int(np.argmax(onehot[bad].to_numpy() > 0))
        raise DataError(
            f"{csv}: row {i + 2} (image '{names.iloc[i]}'): unknown label '{bad}'; "
            f"allowed: {', '.join(LABELS)}, {NO_FINDING}"
        )
    labels = np.zeros((len(df), len(LABELS)), dtype=np.uint8)
    for j, name in enumerate(LABELS):
        if name in onehot.columns:
            labels[:, j] = onehot[name].to_numpy() > 0
    pid = pd.to_numeric(df["Patient ID"], errors="coerce")
    if pid.isna().any():
        i = int(np.argmax(pid.isna().to_numpy()))
        raise DataError(f"{csv}: row {i + 2}: 'Patient ID' is {df['Patient ID'].iloc[i]!r}, expected an integer")
    views = df["View Position"].to_numpy(dtype=str) if "View Position" in df else np.full(len(df), "")
    return pd.DataFrame({"name": names.to_numpy(), "patient": pid.astype(np.int64).to_numpy(), "view": views}).assign(
        _labels=list(labels)
    )


def scan_images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from images/ and NIH's images_NNN/images/ shards. The same name in two
    places is an error (which file is the labelled one?); a link that cannot be followed is unreadable."""
    dirs = [root / "images"] + sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    try:
                        is_file = e.is_file()
                    except OSError as err:  # a symlink loop, a dangling mount
                        raise DataError(f"{e.path}: cannot read ({err.strerror or err})") from None
                    if not is_file:
                        continue
                    if e.name in found:
                        raise DataError(
                            f"{e.path}: the image name '{e.name}' is also at {found[e.name]}; "
                            "each name must be in one place only"
                        )
                    found[e.name] = Path(e.path)
    return found


def index_dataset(root: str | Path, check_files: bool = True, csv: str | Path | None = None) -> NIHIndex:
    """Read an NIH-layout dataset. With check_files, every CSV row must have its image file."""
    root = Path(root)
    if not root.is_dir() and csv is None:
        raise DataError(f"{root}: not a directory (expected an NIH-layout dataset)")
    csv = Path(csv) if csv else find_csv(root)
    df = read_labels(csv)
    labels = np.stack(df["_labels"].to_numpy()) if len(df) else np.zeros((0, len(LABELS)), np.uint8)
    index = NIHIndex(
        root=root,
        csv=csv,
        names=df["name"].to_numpy(dtype=object),
        labels=labels,
        patients=df["patient"].to_numpy(),
        views=df["view"].to_numpy(),
    )
    if check_files:
        found = scan_images(root)
        if not found:
            raise DataError(f"{root / 'images'}: no image files (expected images/ or images_001/images/ ...)")
        paths = []
        for i, name in enumerate(index.names):
            p = found.get(name)
            if p is None:
                raise DataError(f"{root / 'images' / name}: missing (listed in {csv.name} row {i + 2})")
            paths.append(p)
        index.paths = paths
    return index


# ---------------------------------------------------------------- splits


def split_by_patient(
    patients: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Random split of the *patients* (never of images) into train/val/test image indices."""
    uniq = np.unique(patients)
    rng = np.random.default_rng(seed)
    order = rng.permutation(uniq)
    n_test = max(1, round(len(uniq) * test_fraction))
    n_val = max(1, round(len(uniq) * val_fraction))
    if n_test + n_val >= len(uniq):
        raise DataError(f"only {len(uniq)} patients: too few to split into train/val/test")
    group = {int(p): "test" for p in order[:n_test]}
    group.update({int(p): "val" for p in order[n_test : n_test + n_val]})
    which = np.array([group.get(int(p), "train") for p in patients])
    return {s: np.flatnonzero(which == s) for s in SPLITS}


def official_split(index: NIHIndex, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """NIH's own split: test from test_list.txt; validation carved by patient out of train_val_list.txt."""
    lists = {}
    for name in ("train_val_list.txt", "test_list.txt"):
        p = index.root / name
        if not p.is_file():
            raise DataError(
                f'{p}: not found (needed for data.split = "official"; use data.split = "patient" otherwise)'
            )
        lists[name] = set(p.read_text().split())
    pos = {n: i for i, n in enumerate(index.names)}
    test = np.array(sorted(pos[n] for n in lists["test_list.txt"] if n in pos), dtype=np.int64)
    trval = np.array(sorted(pos[n] for n in lists["train_val_list.txt"] if n in pos), dtype=np.int64)
    uniq = np.unique(index.patients[trval])
    rng = np.random.default_rng(seed)
    val_patients = set(rng.permutation(uniq)[: max(1, round(len(uniq) * val_fraction))].tolist())
    is_val = np.array([int(p) in val_patients for p in index.patients[trval]], dtype=bool)
    return {"train": trval[~is_val], "val": trval[is_val], "test": test}


def make_split(index: NIHIndex, data_cfg: dict) -> dict[str, np.ndarray]:
    if data_cfg["split"] == "official":
        return official_split(index, data_cfg["val_fraction"], data_cfg["seed"])
    return split_by_patient(index.patients, data_cfg["val_fraction"], data_cfg["test_fraction"], data_cfg["seed"])


def leakage(index: NIHIndex, split: dict[str, np.ndarray]) -> int:
    """Number of patients present in more than one split (must be 0)."""
    seen = [set(index.patients[split[s]].tolist()) for s in SPLITS]
    return len((seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2]))


def split_manifest(index: NIHIndex, split: dict[str, np.ndarray]) -> dict:
    """The split as image names per part, with the sha256 of its canonical JSON."""
    body = {s: [str(n) for n in index.names[split[s]]] for s in SPLITS}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {
        "sha256": digest,
        "counts": {s: len(body[s]) for s in SPLITS},
        "leakage_patients": leakage(index, split),
        **body,
    }


def label_counts(labels: np.ndarray) -> dict[str, int]:
    counts = {name: int(labels[:, j].sum()) for j, name in enumerate(LABELS)}
    counts[NO_FINDING] = int((labels.sum(1) == 0).sum())
    return counts


# ---------------------------------------------------------------- images


def to_gray8(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, RGB, RGBA, I;16 ...) as 8-bit grayscale: 16-bit scaled by 255/65535."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") else max(1.0, float(a.max()))
        return Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "P", "PA"):
        return im.convert("RGBA").convert("L") if im.mode != "LA" else im.convert("L")
    return im if im.mode == "L" else im.convert("L")


def resized(im: Image.Image, size: int) -> np.ndarray:
    """An 8-bit grayscale image at size x size, as training sees it."""
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8)


def load_gray(path: str | Path, size: int) -> np.ndarray:
    """Decode any PIL mode to 8-bit grayscale, resized to size x size.

    The one decode path of the project: the cache stores exactly this array, and `chexui predict`
    feeds DICOM pixels (engine/data/images.py) through the same `resized`.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return resized(to_gray8(im), size)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def check_dataset(root: str | Path, decode: bool = True, max_problems: int = 20) -> dict:
    """Summary of a dataset for `chexui data check`; 'problems' lists what is wrong."""
    index = index_dataset(root, check_files=True)
    problems: list[str] = []
    sizes: dict[str, int] = {}
    if decode:
        for p in index.paths:
            try:
                with Image.open(p) as im:
                    im.load()
                    key = f"{im.size[0]}x{im.size[1]} {im.mode}"
                    sizes[key] = sizes.get(key, 0) + 1
            except Image.DecompressionBombError as e:
                problems.append(f"{p}: image too large to decode ({e})")
            except (OSError, SyntaxError, ValueError) as e:
                problems.append(f"{p}: cannot read image ({e})")
                if len(problems) >= max_problems:
                    break
    split = split_by_patient(index.patients, 0.1, 0.2, 0)
    views = pd.Series(index.views).value_counts().to_dict()
    summary = {
        "root": str(index.root),
        "csv": str(index.csv),
        "images": len(index),
        "patients": int(len(np.unique(index.patients))),
        "label_counts": label_counts(index.labels),
        "views": {str(k): int(v) for k, v in views.items() if k},
        "image_formats": sizes,
        "split": {s: int(len(split[s])) for s in SPLITS},
        "leakage_patients": leakage(index, split),
        "official_split": (index.root / "test_list.txt").is_file(),
        "problems": problems,
    }
    return summary
