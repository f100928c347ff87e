"""Synthetic chest radiograph phantoms in the NIH layout: the embedded demo dataset.

Each patient gets an anatomy (thorax, lungs, heart, mediastinum, spine, ribs, clavicles,
diaphragm) that follow-up images share; each of the 14 findings has its own visual signature with
random subtlety. Labels follow NIH-like prevalence and co-occurrence with a floor so that every label
has enough positives in a small set, plus a little label noise as in NLP-mined labels.
Same seed, same bytes: every image draws from its own SeedSequence([seed, ...]).
numpy + PIL only.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from engine.labels import LABELS, NO_FINDING

# NIH prevalence (fraction of 112,120 images, data README) and the floor that keeps small sets usable.
NIH_PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}
PREVALENCE_FLOOR = 0.07
# (a, b, p): when a is present, b is added with probability p (NIH's frequent pairs).
CO_OCCURRENCE = [
    ("Effusion", "Atelectasis", 0.25),
    ("Edema", "Effusion", 0.35),
    ("Cardiomegaly", "Effusion", 0.3),
    ("Pneumonia", "Infiltration", 0.35),
    ("Consolidation", "Infiltration", 0.2),
    ("Mass", "Nodule", 0.2),
    ("Emphysema", "Pneumothorax", 0.2),
    ("Fibrosis", "Pleural_Thickening", 0.2),
]
VERSION = 1  # bump when the drawing changes: the cached demo set is regenerated
DEFAULT = {"images": 2000, "size": 128, "seed": 0}  # the embedded demo dataset
CHRONIC = {"Cardiomegaly", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
LABEL_DROP = 0.02  # a present finding missing from the report-mined label
LABEL_SPURIOUS = 0.004  # per image: a label with nothing visible
GENERATOR = "generator.json"


def draw_labels(rng: np.random.Generator, previous: set[str] | None) -> set[str]:
    found = {name for name in LABELS if rng.random() < max(NIH_PREVALENCE[name], PREVALENCE_FLOOR) * 0.85}
    if previous:
        found |= {n for n in sorted(previous) if n in CHRONIC and rng.random() < 0.7}
    for a, b, p in CO_OCCURRENCE:
        if a in found and rng.random() < p:
            found.add(b)
    return found


def draw_anatomy(rng: np.random.Generator) -> dict:
    return {
        "body_w": rng.uniform(0.40, 0.46),
        "body_cy": rng.uniform(0.55, 0.60),
        "lung_dx": rng.uniform(0.16, 0.19),
        "lung_cy": rng.uniform(0.43, 0.47),
        "lung_ax": rng.uniform(0.13, 0.16),
        "lung_ay": rng.uniform(0.25, 0.29),
        "heart_w": rng.uniform(0.10, 0.12),
        "heart_cx": rng.uniform(0.53, 0.56),
        "heart_cy": rng.uniform(0.56, 0.60),
        "rib_space": rng.uniform(0.055, 0.07),
        "rib_curve": rng.uniform(1.2, 2.0),
        "clav_y": rng.uniform(0.17, 0.21),
        "brightness": rng.uniform(0.9, 1.1),
        "texture_seed": int(rng.integers(2**31)),
    }


class Canvas:
    """Normalised coordinates on an S x S float32 grid (x right, y down, both in [0, 1])."""

    def __init__(self, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = c[None, :], c[:, None]
        self.px = 1.0 / size

    def ellipse(self, cx, cy, ax, ay, soft=0.01, angle=0.0):
        dx, dy = self.x - cx, self.y - cy
        if angle:
            ca, sa = np.cos(angle), np.sin(angle)
            dx, dy = dx * ca + dy * sa, -dx * sa + dy * ca
        r = np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2)
        edge = max(soft, self.px) / min(ax, ay)
        return np.clip((1.0 - r) / edge, 0.0, 1.0), r

    def smooth_noise(self, rng, cells: int):
        small = rng.standard_normal((cells, cells)).astype(np.float32)
        big = Image.fromarray(small, mode="F").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(big, dtype=np.float32)


def render(
    size: int, anatomy: dict, findings: set[str], rng: np.random.Generator, regions: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """One radiograph as uint8 [size, size]. With a dict `regions`, also where each finding was drawn:
    regions[name] = bool [size, size] (recording draws nothing from `rng`: the image is the same)."""
    cv, a = Canvas(size), anatomy

    def drawn(name: str, mask) -> None:
        if regions is not None:
            regions[name] = regions.get(name, np.zeros((size, size), bool)) | np.broadcast_to(mask, (size, size))

    x, y = cv.x, cv.y
    sub = {name: rng.uniform(0.55, 1.0) for name in sorted(findings)}  # subtlety per finding (sorted: str hashes vary)
    jx, jy = rng.normal(0, 0.008, 2)  # positioning differs between follow-ups

    emphysema = "Emphysema" in findings
    lung_scale = 1.0 + 0.12 * sub.get("Emphysema", 0)
    body, _ = cv.ellipse(0.5 + jx, a["body_cy"] + jy, a["body_w"], 0.62, soft=0.03)
    img = 0.58 * body

    lungs, rho, lung_boxes = [], [], []
    for side in (-1, 1):  # -1: image left = patient's right lung
        cx = 0.5 + side * a["lung_dx"] + jx
        ax, ay = a["lung_ax"] * lung_scale, a["lung_ay"] * lung_scale
        cy = a["lung_cy"] + jy + (0.03 * sub["Emphysema"] if emphysema else 0)
        m, r = cv.ellipse(cx, cy, ax, ay, soft=0.012)
        # diaphragm: a dome that clips the lung base; flat and low in emphysema
        dome = 0.0 if emphysema else 0.05
        base = cy + ay * (0.72 + (0.12 if emphysema else 0))
        if "Atelectasis" in findings and rng.random() < 0.5 + 0.5 * (side == 1):
            base -= 0.04 * sub["Atelectasis"]  # volume loss lifts the hemidiaphragm
        diaphragm = base - dome * (1 - ((x - cx) / ax) ** 2)
        m = m * np.clip((diaphragm - y) / 0.01, 0, 1)
        lungs.append(m)
        rho.append(r)
        lung_boxes.append((cx, cy, ax, ay, base))

    texture = cv.smooth_noise(np.random.default_rng(a["texture_seed"]), 28)
    markings = 0.05 * np.abs(texture)
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    heart_scale = 1.0 + (0.3 + 0.3 * sub["Cardiomegaly"] if "Cardiomegaly" in findings else 0)
    heart, _ = cv.ellipse(
        a["heart_cx"] + jx,
        a["heart_cy"] + jy,
        a["heart_w"] * heart_scale,
        0.095 * (1 + 0.5 * (heart_scale - 1)),
        soft=0.01,
    )
    medi = (
        np.clip((0.045 - np.abs(x - 0.5 - jx)) / 0.01, 0, 1)
        * np.clip((0.62 - y) / 0.03, 0, 1)
        * np.clip((y - 0.08) / 0.03, 0, 1)
    )
    air = lung * (1 - heart) * (1 - medi)
    if "Cardiomegaly" in findings:
        drawn("Cardiomegaly", heart > 0.5)
    darkness = 0.42 + (0.08 * sub["Emphysema"] if emphysema else 0)
    mark_gain = 1.0 - (0.6 * sub["Emphysema"] if emphysema else 0)

    # pneumothorax: a lateral rim of air without lung markings, edged by the visceral pleural line
    no_markings = np.zeros_like(air)
    pleural_line = np.zeros_like(air)
    if "Pneumothorax" in findings:
        s = int(rng.integers(2))
        cx = lung_boxes[s][0]
        lateral = (x - cx) * (1 if s == 1 else -1) > -0.02
        w = 0.18 + 0.2 * sub["Pneumothorax"]
        rim = (rho[s] > 1 - w) & lateral & (lungs[s] > 0.5)
        no_markings = rim.astype(np.float32)
        pleural_line = (np.abs(rho[s] - (1 - w)) < 1.5 * cv.px / a["lung_ax"]) & lateral & (lungs[s] > 0.5)
        drawn("Pneumothorax", rim)
    img = img - darkness * air - 0.06 * no_markings + markings * air * mark_gain * (1 - no_markings)
    img = img + 0.18 * pleural_line * sub.get("Pneumothorax", 0)

    # ribs and clavicles: bone over the thorax
    ribs = 0.5 * (1 + np.cos(2 * np.pi * (y - 0.12 - a["rib_curve"] * (x - 0.5) ** 2) / a["rib_space"]))
    img = img + 0.09 * ribs**6 * body * np.clip((0.8 - y) / 0.05, 0, 1)
    for side in (-1, 1):
        clav = np.exp(-(((y - a["clav_y"] - 0.12 * np.abs(x - 0.5) + 0.02) / 0.012) ** 2))
        img = img + 0.16 * clav * (np.abs(x - 0.5) < 0.3) * ((x - 0.5) * side > 0)
    spine = np.clip((0.03 - np.abs(x - 0.5 - jx)) / 0.01, 0, 1) * body
    img = img + 0.12 * spine * (1 - heart) + 0.08 * heart * body

    def in_lung(s=None):
        s = int(rng.integers(2)) if s is None else s
        cx, cy, ax, ay, base = lung_boxes[s]
        for _ in range(20):
            px, py = cx + rng.uniform(-0.6, 0.6) * ax, cy + rng.uniform(-0.6, 0.5) * ay
            if py < base - 0.04:
                return px, py, s
        return cx, cy, s

    opac = np.zeros_like(img)  # densities added inside the lungs
    if "Effusion" in findings:
        for s in [0, 1] if rng.random() < 0.3 else [int(rng.integers(2))]:
            cx, cy, ax, ay, base = lung_boxes[s]
            h = 0.05 + 0.09 * sub["Effusion"]
            lateral = np.abs(x - cx) / ax
            meniscus = base - h - 0.06 * lateral**2 * ((x - cx) * (1 if s else -1) > 0)
            opac += 0.38 * lungs[s] * np.clip((y - meniscus) / 0.012, 0, 1)
            drawn("Effusion", lungs[s] * np.clip((y - meniscus) / 0.012, 0, 1) > 0.5)
    if "Nodule" in findings:
        for _ in range(1 + int(rng.random() < 0.3)):
            px, py, _s = in_lung()
            m, _ = cv.ellipse(px, py, r := rng.uniform(0.03, 0.042), r, soft=0.006)
            opac += (0.26 + 0.18 * sub["Nodule"]) * m
            drawn("Nodule", m > 0.5)
    if "Mass" in findings:
        px, py, _s = in_lung()
        r = rng.uniform(0.06, 0.09)
        m, _ = cv.ellipse(px, py, r, r * rng.uniform(0.8, 1.1), soft=0.012, angle=rng.uniform(0, 3))
        opac += (0.22 + 0.15 * sub["Mass"]) * m
        drawn("Mass", m > 0.5)
    if "Consolidation" in findings:  # lobar: the upper lobe, homogeneous, sharp fissure below
        s = int(rng.integers(2))
        cx, cy, ax, ay, base = lung_boxes[s]
        fissure = cy - 0.05 + 0.08 * (x - cx) * (1 if s else -1)
        opac += (0.22 + 0.16 * sub["Consolidation"]) * lungs[s] * np.clip((fissure - y) / 0.008, 0, 1)
        drawn("Consolidation", lungs[s] * np.clip((fissure - y) / 0.008, 0, 1) > 0.5)
    if "Pneumonia" in findings:  # fluffy lower-zone opacity with air bronchograms
        s = int(rng.integers(2))
        cx, cy, ax, ay, base = lung_boxes[s]
        m, _ = cv.ellipse(cx + rng.uniform(-0.03, 0.03), base - 0.11, 0.085, 0.07, soft=0.03)
        branches = np.abs(np.sin((x - cx) * 95 + 8 * (y - base) ** 2 * 40)) < 0.18
        opac += (0.24 + 0.14 * sub["Pneumonia"]) * m * lungs[s] * (1 - 0.6 * branches)
        drawn("Pneumonia", m * lungs[s] > 0.5)
    if "Infiltration" in findings:  # patchy ill-defined opacities, often both lungs
        for _ in range(int(rng.integers(4, 8))):
            px, py, _s = in_lung()
            m, _ = cv.ellipse(px, py, rng.uniform(0.03, 0.05), rng.uniform(0.025, 0.045), soft=0.025)
            opac += (0.10 + 0.08 * sub["Infiltration"]) * m
            drawn("Infiltration", m > 0.5)
    if "Atelectasis" in findings:  # wedge toward the hilum at the base, with volume loss above
        s = int(rng.integers(2))
        cx, cy, ax, ay, base = lung_boxes[s]
        t = np.clip((y - cy) / (base - cy), 0, 1)
        wedge = (np.abs(x - cx) < 0.02 + 0.09 * t) & (y > cy) & (y < base)
        opac += (0.20 + 0.12 * sub["Atelectasis"]) * wedge * lungs[s]
        drawn("Atelectasis", wedge * lungs[s] > 0.5)
    if "Edema" in findings:  # bilateral perihilar (bat-wing) haze
        for s in (0, 1):
            cx, cy = lung_boxes[s][:2]
            hx = 0.5 + (cx - 0.5) * 0.55
            opac += (0.16 + 0.12 * sub["Edema"]) * np.exp(-(((x - hx) / 0.07) ** 2) - ((y - cy) / 0.11) ** 2)
            drawn("Edema", np.exp(-(((x - hx) / 0.07) ** 2) - ((y - cy) / 0.11) ** 2) > 0.5)
    if "Fibrosis" in findings:  # reticular net, peripheral and basal
        ang = rng.uniform(0, np.pi)
        u, v = x * np.cos(ang) + y * np.sin(ang), -x * np.sin(ang) + y * np.cos(ang)
        net = np.maximum(np.abs(np.sin(u * 70)), np.abs(np.sin(v * 70))) > 0.8
        opac += (0.10 + 0.08 * sub["Fibrosis"]) * net * np.clip((y - 0.35) / 0.1, 0, 1)
        drawn("Fibrosis", np.clip((y - 0.35) / 0.1, 0, 1) > 0.5)  # the zone the net covers
    if "Pleural_Thickening" in findings:  # band along the lateral chest wall inside the lung edge
        s = int(rng.integers(2))
        cx = lung_boxes[s][0]
        band = (rho[s] > 1 - (0.14 + 0.08 * sub["Pleural_Thickening"])) & ((x - cx) * (1 if s else -1) > 0)
        opac += 0.34 * band * lungs[s]
        drawn("Pleural_Thickening", band & (lungs[s] > 0.5))
    img = img + opac * lung
    if regions is not None:  # lung findings show only inside the lungs (opacities are scaled by `lung`)
        for name in regions.keys() - {"Cardiomegaly"}:
            regions[name] &= lung > 0.5
        if emphysema:
            drawn("Emphysema", lung > 0.5)  # diffuse: hyperinflated, dark lungs

    if "Hernia" in findings:  # retrocardiac round density with a gas bubble
        hx, hy = a["heart_cx"] + jx - 0.03, a["heart_cy"] + jy + 0.04
        r = 0.055 + 0.02 * sub["Hernia"]
        m, _ = cv.ellipse(hx, hy, r, r * 0.85, soft=0.008)
        gas, _ = cv.ellipse(hx, hy - r * 0.45, r * 0.6, r * 0.3, soft=0.006)
        img = img + (0.16 + 0.08 * sub["Hernia"]) * m - 0.28 * gas * m
        drawn("Hernia", m > 0.5)

    img = img * a["brightness"] * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03)
    img = np.clip(img, 0, 1) ** rng.uniform(0.9, 1.1)
    out = Image.fromarray((img * 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(radius=max(0.4, size / 700)))
    arr = np.asarray(out, dtype=np.float32)
    # quantum mottle: what makes a real radiograph PNG weigh a few hundred KB at 1024 px
    arr = arr + rng.normal(0, 2.2, arr.shape).astype(np.float32)
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def plan(n_images: int, seed: int) -> list[dict]:
    """Patients, follow-ups, labels and metadata for every image (cheap, sequential)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    rows: list[dict[str, Any]] = []
    pid = 0
    while len(rows) < n_images:
        pid += 1
        n_follow = min(int(rng.geometric(0.35)), n_images - len(rows))
        age, sex = int(rng.integers(18, 90)), "MF"[int(rng.integers(2))]
        previous = None
        for k in range(n_follow):
            shown = draw_labels(rng, previous)
            previous = shown
            reported = {n for n in sorted(shown) if rng.random() >= LABEL_DROP}  # sorted: str hashes vary
            if rng.random() < LABEL_SPURIOUS:
                reported.add(LABELS[int(rng.integers(len(LABELS)))])
            rows.append(
                {
                    "name": f"{pid:08d}_{k:03d}.png",
                    "patient": pid,
                    "follow": k,
                    "age": min(age + k, 95),
                    "sex": sex,
                    "view": "PA" if rng.random() < 0.6 else "AP",
                    "shown": sorted(shown),
                    "reported": [n for n in LABELS if n in reported],
                }
            )
    return rows


def render_row(seed: int, size: int, row: dict, idx: int, regions: dict | None = None) -> np.ndarray:
    anatomy = draw_anatomy(np.random.default_rng(np.random.SeedSequence([seed, 1, row["patient"]])))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, idx]))
    return render(size, anatomy, set(row["shown"]), rng, regions)


def _render_one(args: tuple[int, int, dict, int]) -> bytes:
    img = render_row(*args)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_csv(out: Path, rows: list[dict], size: int) -> None:
    """The NIH label table (Data_Entry_2017.csv) of planned rows."""
    spacing = round(0.143 * 1024 / size, 4)
    lines = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    ]
    for r in rows:
        labels = "|".join(r["reported"]) or NO_FINDING
        lines.append(
            f"{r['name']},{labels},{r['follow']},{r['patient']},{r['age']},{r['sex']},"
            f"{r['view']},{size},{size},{spacing},{spacing}"
        )
    (out / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")


def generate(
    out: str | Path, n_images: int = 2000, size: int = 128, seed: int = 0, workers: int | None = None, progress=None
) -> Path:
    """Write a synthetic dataset in the NIH layout to `out`. Same arguments, same bytes."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = plan(n_images, seed)
    workers = workers or os.cpu_count() or 1
    jobs = [(seed, size, row, i) for i, row in enumerate(rows)]
    ctx = None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for i, png in enumerate(pool.map(_render_one, jobs, chunksize=16)):
            (out / "images" / rows[i]["name"]).write_bytes(png)
            if progress:
                progress(i + 1, len(rows))
    # what drew it: `finding_regions` re-draws an image from these to know where each finding is
    (out / GENERATOR).write_text(json.dumps({"version": VERSION, "images": n_images, "size": size, "seed": seed}))
    write_csv(out, rows, size)
    # NIH's official split is by patient: roughly the last fifth of patients are test.
    n_pat = rows[-1]["patient"]
    test_from = int(n_pat * 0.8) + 1
    (out / "train_val_list.txt").write_text("".join(r["name"] + "\n" for r in rows if r["patient"] < test_from))
    (out / "test_list.txt").write_text("".join(r["name"] + "\n" for r in rows if r["patient"] >= test_from))
    (out / "README.txt").write_text(
        "SYNTHETIC DATA - NOT REAL RADIOGRAPHS.\n"
        f"Chest X-ray phantoms drawn by `chexui data demo` (seed {seed}, {n_images} images, {size} px) in the\n"
        "NIH ChestX-ray14 layout. Findings are drawn shapes with NIH-like label prevalence (with a floor)\n"
        "and a little label noise. For demos and tests of the pipeline only; no clinical meaning.\n"
    )
    return out


def default_root() -> Path:
    """Where the embedded demo dataset lives: $CHEXUI_DEMO_DIR or the user cache dir."""
    env = os.environ.get("CHEXUI_DEMO_DIR")
    if env:
        return Path(env)
    import platformdirs

    d = DEFAULT
    return Path(platformdirs.user_cache_dir("chexui")) / f"demo-v{VERSION}-{d['images']}x{d['size']}-s{d['seed']}"


def ensure(root: str | Path, progress=None) -> Path:
    """The embedded demo dataset at `root`, generated on first use (atomically: temp dir + rename)."""
    root = Path(root)
    if (root / "Data_Entry_2017.csv").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    generate(tmp, DEFAULT["images"], DEFAULT["size"], DEFAULT["seed"], progress=progress)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return root


def finding_regions(root: str | Path, names: list[str]) -> dict[str, tuple[set[str], dict[str, np.ndarray]]]:
    """Ground truth for explanations: for each image name of a demo set at `root`, the findings drawn
    in it (not the noisy reported labels) and where each was drawn (bool masks at the set's size).
    The image is drawn again from the set's recorded generator arguments (the default demo set's
    when the set predates the record) and must equal the stored file, else a DataError."""
    from engine.errors import DataError

    root = Path(root)
    gen = root / GENERATOR
    args = json.loads(gen.read_text()) if gen.is_file() else {**DEFAULT, "version": VERSION}
    if args.get("version") != VERSION:
        raise DataError(
            f"{gen}: drawn by demo generator version {args.get('version')}, this chexui draws version {VERSION}"
        )
    rows = {r["name"]: (i, r) for i, r in enumerate(plan(args["images"], args["seed"]))}
    out = {}
    for name in names:
        if name not in rows:
            raise DataError(f"{root}: {name} is not an image of a chexui demo set with {args}")
        i, row = rows[name]
        regions: dict[str, np.ndarray] = {}
        img = render_row(args["seed"], args["size"], row, i, regions)
        with Image.open(root / "images" / name) as im:
            if not np.array_equal(np.asarray(im.convert("L")), img):
                raise DataError(
                    f"{root / 'images' / name}: differs from what the demo generator draws for it "
                    "(not a chexui demo image, or drawn by another version)"
                )
        out[name] = (set(row["shown"]), regions)
    return out
