"""Images a user points chexui at (`chexui predict`): PNG, JPEG and DICOM files, decoded to the 8-bit
grayscale array training sees (`nih.resized`: the same resize as the dataset and cache path).

DICOM (pydicom): the modality LUT (rescale slope/intercept) then the VOI LUT or window the file
carries, then MONOCHROME1 inverted (so bone is bright, as in the NIH PNGs), then to 8 bits: a VOI
output over its window, anything else over the range its stored bits allow (12-bit 0..4095 -> 0..255).
Multi-frame and non-image DICOM files are refused with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine import nih
from engine.errors import DataError

SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (the "DICM" preamble marker), whatever its name."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find(paths: list[str | Path]) -> list[Path]:
    """The image files among `paths`: files as given, directories searched recursively (by suffix, or
    any file with the DICOM marker), in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and (f.suffix.lower() in SUFFIXES or (not f.suffix and is_dicom(f))))
        else:
            out.append(p)
    return out


def dicom_gray8(path: Path) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, truncated files ...
        raise DataError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM without pixel data (a {ds.get('Modality', '?')} object, not an image)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames); export one frame per file")
    if ds.get("SamplesPerPixel", 1) != 1:
        raise DataError(f"{path}: colour DICOM ({ds.PhotometricInterpretation}); chest radiographs are grayscale")
    try:
        stored = ds.pixel_array
    except Exception as e:  # compressed transfer syntax without its decoder, damaged data
        raise DataError(f"{path}: cannot decode its pixel data ({type(e).__name__}: {e})") from None
    a = apply_modality_lut(stored, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    bits = int(ds.get("BitsStored", 8))
    if has_voi:
        a = apply_voi_lut(a, ds, prefer_lut=True)  # windowed into the range of the stored bits
    lo, hi = (0.0, float(2 ** bits - 1)) if not ds.get("PixelRepresentation", 0) else (
        float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1))
    if not has_voi and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        lo, hi = float(a.min()), float(a.max())  # modality units (e.g. HU): their own range
    a = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-9)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        a = 1.0 - a
    return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))


def load(path: str | Path, size: int) -> np.ndarray:
    """Any supported file as the size x size uint8 array training sees (DataError saying why not)."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom") or is_dicom(path):
        return nih.resized(dicom_gray8(path), size)
    return nih.load_gray(path, size)
