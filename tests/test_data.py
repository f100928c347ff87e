"""Data layer: NIH reader, splits, demo generator, cache, `chexui data` commands."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import cache, demo, nih
from engine.errors import DataError
from engine.labels import LABELS
from tests.conftest import chexui, nih_csv, nih_sample

# Label counts of the full NIH table, 2020 revision (shared/data/README.md).
NIH_COUNTS = {
    "No Finding": 60361,
    "Infiltration": 19894,
    "Effusion": 13317,
    "Atelectasis": 11559,
    "Nodule": 6331,
    "Mass": 5782,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Pleural_Thickening": 3385,
    "Cardiomegaly": 2776,
    "Emphysema": 2516,
    "Edema": 2303,
    "Fibrosis": 1686,
    "Pneumonia": 1431,
    "Hernia": 227,
}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_demo_same_seed_same_bytes(tmp_path):
    # two processes with different string-hash seeds: set iteration order must not leak into the output
    for out, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        assert (
            chexui("data", "demo", tmp_path / out, "--images", 400, "--size", 16, "--seed", 3, env=env).returncode == 0
        )
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(a) == 400 + 5 and a == b  # images, CSV, two split lists, README, generator.json
    demo.generate(tmp_path / "c", 400, 16, seed=4)
    assert tree_digest(tmp_path / "c") != a


def test_demo_writes_nih_layout_with_every_label(tiny_demo):
    index = nih.index_dataset(tiny_demo)
    assert len(index) == 160 and index.labels.shape == (160, 14)
    assert (index.labels.sum(0) > 0).all(), "every label needs positives, even in a small set"
    assert "SYNTHETIC" in (tiny_demo / "README.txt").read_text()
    split = nih.make_split(index, {"split": "official", "val_fraction": 0.1, "seed": 0})
    assert nih.leakage(index, split) == 0 and len(split["test"]) > 0
    # follow-ups share a patient id
    assert len(np.unique(index.patients)) < len(index)


def test_data_check_demo_json(tiny_demo):
    r = chexui("data", "check", tiny_demo, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["images"] == 160 and s["leakage_patients"] == 0 and s["problems"] == []
    assert set(s["label_counts"]) == set(LABELS) | {"No Finding"}
    assert s["image_formats"] == {"32x32 L": 160}


def test_data_check_real_nih_sample():
    root = nih_sample()
    r = chexui("data", "check", root, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["images"] == 434 and s["patients"] == 114 and s["leakage_patients"] == 0
    modes = {k.split()[1] for k in s["image_formats"]}
    assert {"RGB", "RGBA"} <= modes
    # grayscale conversion of RGBA and RGB
    index = nih.index_dataset(root)
    for p in index.paths[:20]:
        a = nih.load_gray(p, 64)
        assert a.dtype == np.uint8 and a.shape == (64, 64) and a.std() > 5


def test_full_nih_table_counts_and_patient_split():
    index = nih.index_dataset(nih_csv().parent, check_files=False, csv=nih_csv())
    assert len(index) == 112_120 and len(np.unique(index.patients)) == 30_805
    counts = nih.label_counts(index.labels)
    assert counts == NIH_COUNTS
    split = nih.split_by_patient(index.patients, 0.1, 0.2, seed=0)
    assert sum(len(v) for v in split.values()) == 112_120
    assert nih.leakage(index, split) == 0
    m = nih.split_manifest(index, split)
    assert m["leakage_patients"] == 0 and len(m["sha256"]) == 64
    assert nih.split_manifest(index, nih.split_by_patient(index.patients, 0.1, 0.2, seed=0))["sha256"] == m["sha256"]


def test_images_in_nih_shards(tmp_path, tiny_demo):
    root = tmp_path / "sharded"
    shutil.copytree(tiny_demo, root)
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "images_002" / "images").mkdir(parents=True)
    for i, n in enumerate(names):
        (root / "images" / n).rename(root / f"images_00{1 + i % 2}" / "images" / n)
    (root / "images").rmdir()
    assert len(nih.index_dataset(root).paths) == 160


def test_any_pil_mode_becomes_8bit_gray(tmp_path):
    grad = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(grad).save(tmp_path / "l.png")
    Image.fromarray(grad).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(grad).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grad.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    ref = nih.load_gray(tmp_path / "l.png", 64)
    for name in ("rgb", "rgba", "i16"):
        got = nih.load_gray(tmp_path / f"{name}.png", 64)
        assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref).max() <= 1, name


# ---------------------------------------------------------------- bad data: exit 2, names the file/row


def _broken(tmp_path, tiny_demo) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tiny_demo, root)
    return root


def _check_fails(root: Path, *needles: str):
    r = chexui("data", "check", root)
    assert r.returncode == 2, (r.stdout, r.stderr)
    for n in needles:
        assert n in r.stderr, r.stderr


def test_missing_csv(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    (root / "Data_Entry_2017.csv").unlink()
    _check_fails(root, "Data_Entry_2017.csv", "not found")


def test_missing_image(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    victim = sorted((root / "images").iterdir())[5]
    victim.unlink()
    _check_fails(root, victim.name, "missing", "row")


def test_truncated_png(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    victim = sorted((root / "images").iterdir())[7]
    victim.write_bytes(victim.read_bytes()[:200])
    _check_fails(root, victim.name, "cannot read image")


def test_unknown_label(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    cells = lines[3].split(",")
    cells[1] = "Atelectasis|Covid"
    lines[3] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    _check_fails(root, "row 4", "unknown label 'Covid'")


def test_empty_csv(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    (root / "Data_Entry_2017.csv").write_text("")
    _check_fails(root, "Data_Entry_2017.csv", "empty")
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n")
    _check_fails(root, "Data_Entry_2017.csv", "no image rows")


def test_duplicated_image_row(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    lines.append(lines[2])
    csv.write_text("\n".join(lines) + "\n")
    _check_fails(root, lines[2].split(",")[0], "listed twice", f"row {len(lines)}")


# ---------------------------------------------------------------- cache


def test_cache_prepare_matches_decoding_and_rebuilds_on_change(tmp_path, tiny_demo):
    torch = pytest.importorskip("torch")
    from engine.data.batches import Images, to_input

    root = _broken(tmp_path, tiny_demo)
    r = chexui("data", "prepare", root, "--size", 48)
    assert r.returncode == 0, r.stderr
    index = nih.index_dataset(root)
    mem = cache.open_cache(index, 48)
    assert mem is not None and mem.shape == (160, 48, 48)
    rows = [3, 17, 99, 150]
    cached, decoded = Images(index, 48, mem)[rows], Images(index, 48, None)[rows]
    for a, b in zip(cached, decoded):
        assert torch.equal(a, b)
    flip = torch.tensor([True, False, True, False])
    assert torch.equal(to_input(cached[0], torch.device("cpu"), flip), to_input(decoded[0], torch.device("cpu"), flip))
    # an image changes on disk -> the cache is stale and is rebuilt
    p = index.paths[3]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    assert cache.open_cache(nih.index_dataset(root), 48) is None
    fresh = cache.prepare(nih.index_dataset(root), 48, workers=1)
    assert fresh[3].max() == 0


def test_augmentation_is_batched_flip_and_imagenet_normalisation():
    torch = pytest.importorskip("torch")
    from engine.data.batches import IMAGENET_MEAN, IMAGENET_STD, to_input

    x = torch.arange(2 * 4 * 4, dtype=torch.uint8).view(2, 4, 4) * 7
    out = to_input(x, torch.device("cpu"), torch.tensor([True, False]))
    assert out.shape == (2, 3, 4, 4)
    g = x.float() / 255
    for c in range(3):
        assert torch.allclose(out[0, c], (g[0].flip(-1) - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)
        assert torch.allclose(out[1, c], (g[1] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)


def test_split_errors_name_the_list(tmp_path, tiny_demo):
    root = _broken(tmp_path, tiny_demo)
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt"):
        nih.make_split(nih.index_dataset(root), {"split": "official", "val_fraction": 0.1, "seed": 0})
