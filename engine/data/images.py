"""Images a user points chexui at (`chexui predict`): PNG, JPEG and DICOM files, decoded to the 8-bit
grayscale array training sees (`nih.resized`: the same resize as the dataset and cache path).

DICOM (pydicom), in the standard's order: the modality LUT (rescale slope/intercept), then the VOI LUT
(over its own output range, from its descriptor) or the window the file carries (mapped onto 0..255),
then MONOCHROME1 inverted (so bone is bright, as in the NIH PNGs); without either, over the range its
stored bits allow (12-bit 0..4095 -> 0..255). Images, DICOM included, are capped at PIL's pixel limit
before decoding, and a deflated DICOM is refused if it inflates past it; multi-frame, colour and
non-image DICOM files and bad attribute values are refused with a one-line reason. A path that is not a
regular file (a FIFO) is refused, not waited on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data import nih
from engine.errors import DataError

SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # the same cap for DICOM as PIL's for PNG and JPEG
MAX_DICOM_BYTES = 512 << 20  # a single-frame radiograph is tens of MB
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is zlib data


def regular_file(path: Path) -> None:
    """A path the user named must be a regular file (a FIFO would hang the reader, a device never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a FIFO, device or socket is not an image)")


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (the "DICM" preamble marker), whatever its name."""
    try:
        regular_file(path)
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except (OSError, DataError):
        return False


def find(paths: Sequence[str | Path]) -> list[Path]:
    """The image files among `paths`: files as given, directories searched recursively (by suffix, or
    any file with the DICOM marker), in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and (f.suffix.lower() in SUFFIXES or (not f.suffix and is_dicom(f)))
            )
        else:
            out.append(p)
    return out


def _number(ds, name: str, kind=int, default=None):
    """A DICOM attribute as a number (the first value of a multi-valued one), or DataError naming it."""
    value = ds.get(name, default)
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else default
    try:
        out = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"attribute {name} = {str(value)[:40]!r} is not a number") from None
    if isinstance(out, float) and not np.isfinite(out):
        raise DataError(f"attribute {name} = {str(value)[:40]!r} is not a finite number")
    return out


def _check_inflated_size(path: Path, cap: int) -> None:
    """A deflated dataset is inflated whole by pydicom: count what it inflates to first, a chunk at a
    time, and refuse more than `cap` bytes (a 500 KB file of zeros inflates to gigabytes)."""
    import zlib

    with open(path, "rb") as f:
        head = f.read(132 + 12)
        # the file meta group's length (0002,0000 UL): the dataset starts right after the group
        if len(head) < 144 or head[132:136] != b"\x02\x00\x00\x00":
            raise DataError("deflated DICOM without a file meta group length")
        f.seek(144 + int.from_bytes(head[140:144], "little"))
        d, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := f.read(1 << 16):
            while chunk:
                total += len(d.decompress(chunk, 1 << 20))
                if total > cap:
                    raise DataError(f"deflated DICOM inflates to more than {cap >> 20} MiB (the cap for one image)")
                chunk = d.unconsumed_tail


def _voi_lut(values: np.ndarray, item, ds) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) applied to modality values, onto [0, 1] over the LUT's own output
    bits. Hand-written: pydicom 3.0's apply_voi computes the LUT index in the LUT's output type, so the
    values of a 12-bit image through an 8-bit LUT wrap at 256 (a MONOCHROME1 image came out 254-255)."""
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3:
        raise DataError("VOI LUT without a three-value LUT Descriptor")
    n, first, bits = int(descriptor[0]) or 65536, int(descriptor[1]), int(descriptor[2])
    if not 1 <= bits <= 16:
        raise DataError(f"VOI LUT descriptor {list(descriptor)}: expected 1 to 16 output bits")
    raw = item.get("LUTData")
    if isinstance(raw, (bytes, bytearray)):  # OW: 16-bit words in the dataset's byte order
        order = "<" if getattr(ds, "is_little_endian", True) is not False else ">"
        data = np.frombuffer(bytes(raw)[: 2 * n], dtype=f"{order}u2")
    else:
        data = np.asarray(list(raw if raw is not None else []), dtype=np.float64)
    if len(data) < n:
        raise DataError(f"VOI LUT has {len(data)} entries; its descriptor says {n}")
    index = np.clip(np.rint(values.astype(np.float64)) - first, 0, n - 1).astype(np.int64)
    return (data[:n].astype(np.float32)[index] / float(2**bits - 1)).astype(np.float32)


def _window(a: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM window (PS3.3 C.11.2.1.2) mapped onto [0, 1] directly."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (a - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((a - (center - width / 2)) / width, 0.0, 1.0)
    return np.clip((a - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)  # LINEAR (width >= 1)


def dicom_gray8(path: Path) -> Image.Image:
    """A single-frame grayscale DICOM as 8 bits, in the standard's order: modality LUT (rescale),
    then the VOI LUT or the window, then MONOCHROME1 inverted. Every bad value is a DataError."""
    import warnings

    with warnings.catch_warnings():  # pydicom warns about each odd value; the DataError says what matters
        warnings.simplefilter("ignore")
        return _dicom_gray8(path)


def _dicom_gray8(path: Path) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        if os.path.getsize(path) > MAX_DICOM_BYTES:
            raise DataError(f"{path}: larger than {MAX_DICOM_BYTES >> 20} MiB; not one radiograph")
        meta = pydicom.filereader.read_file_meta_info(path)
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
            _check_inflated_size(path, 2 * MAX_PIXELS + (16 << 20))
        ds = pydicom.dcmread(path, defer_size="1 MB")  # (pixel data is read only when decoded, below)
    except DataError as e:
        raise DataError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    except Exception as e:  # InvalidDicomError, truncated files ...
        raise DataError(f"{path}: not a readable DICOM file ({type(e).__name__}: {str(e)[:120]})") from None
    try:
        if "PixelData" not in ds:
            raise DataError(f"DICOM without pixel data (a {str(ds.get('Modality', '?'))[:16]} object, not an image)")
        frames = _number(ds, "NumberOfFrames", int, 1)
        if frames != 1:
            raise DataError(f"multi-frame DICOM ({frames} frames); export one frame per file")
        if _number(ds, "SamplesPerPixel", int, 1) != 1:
            raise DataError(
                f"colour DICOM ({str(ds.get('PhotometricInterpretation', '?'))[:16]}); chest radiographs are grayscale"
            )
        rows, cols = _number(ds, "Rows", int, 0), _number(ds, "Columns", int, 0)
        if rows * cols > MAX_PIXELS or rows <= 0 or cols <= 0:
            raise DataError(f"{rows} x {cols} pixels: outside 1 to {MAX_PIXELS:,} pixels (the cap for one image)")
        bits = _number(ds, "BitsStored", int, 8)
        if not 1 <= bits <= 32:
            raise DataError(f"attribute BitsStored = {bits}: expected 1 to 32")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        try:
            stored = ds.pixel_array
        except Exception as e:  # compressed transfer syntax without its decoder, damaged data
            raise DataError(f"cannot decode its pixel data ({type(e).__name__}: {str(e)[:120]})") from None
        modality = apply_modality_lut(stored, ds)
        a = modality.astype(np.float32)  # (float32: half of float64's memory)
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            a = _voi_lut(modality, ds.VOILUTSequence[0], ds)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = _number(ds, "WindowCenter", float), _number(ds, "WindowWidth", float)
            function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
            if width is None or center is None or width < (1 if function == "LINEAR" else 1e-6):
                raise DataError(
                    f"attribute WindowWidth = {width}: a {function} window needs a width of at least "
                    f"{1 if function == 'LINEAR' else 'more than 0'}"
                )
            a = _window(a, center, width, function)
        else:
            signed = _number(ds, "PixelRepresentation", int, 0)
            lo, hi = (
                (0.0, float(2**bits - 1)) if not signed else (float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1))
            )
            if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
                lo, hi = float(a.min()), float(a.max())  # modality units (e.g. HU): their own range
            a = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-9)
        if photometric == "MONOCHROME1":  # the lowest value is white: invert after the VOI, as displays do
            a = 1.0 - a
        return Image.fromarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8))
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError) as e:  # odd attributes
        raise DataError(f"{path}: unusable DICOM attributes ({type(e).__name__}: {str(e)[:120]})") from None


def load(path: str | Path, size: int) -> np.ndarray:
    """Any supported file as the size x size uint8 array training sees (DataError saying why not)."""
    path = Path(path)
    regular_file(path)
    if path.suffix.lower() in (".dcm", ".dicom") or is_dicom(path):
        return nih.resized(dicom_gray8(path), size)
    return nih.load_gray(path, size)
