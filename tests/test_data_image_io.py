"""load_medical_image: every mode loads to 8-bit RGB, every bad input fails with its own reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xraygpt.datasets.image_io import MIN_SIDE, ImageLoadError, load_medical_image

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64, 0..252


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


# ------------------------------------------------------------- raster modes
@pytest.mark.parametrize(
    "mode",
    ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"],
)
def test_every_mode_loads_as_rgb_with_grey_content_kept(tmp_path, mode):
    grey = Image.fromarray(GRADIENT, "L")
    if mode == "I;16":
        image = Image.fromarray(GRADIENT.astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        image = Image.fromarray(GRADIENT.astype(np.int32 if mode == "I" else np.float32) * 10 - 300)
    else:
        image = grey.convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    path = _save(tmp_path, image, f"img.{fmt.lower()}", format=fmt)
    out = load_medical_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    arr = np.asarray(out).astype(int)
    if mode == "1":  # bilevel keeps only black/white
        assert set(np.unique(arr)) <= {0, 255}
        return
    # Grey content survives (min-max scaling for the deep modes maps 0..252 onto 0..255).
    expected = GRADIENT.astype(int) if mode not in ("I;16", "I", "F") else np.round(GRADIENT / 252 * 255)
    assert np.abs(arr[..., 0] - expected).max() <= 2, mode
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    # The naive .convert("RGB") of I;16 saturates everything above 255 to white.
    values = np.linspace(0, 4000, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "ct16.png")
    arr = np.asarray(load_medical_image(path))[..., 0]
    assert arr.min() == 0 and arr.max() == 255
    assert (arr == 255).mean() < 0.01


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = Image.fromarray(GRADIENT, "L").convert("RGBA")
    rgba.putalpha(0)  # fully transparent
    arr = np.asarray(load_medical_image(_save(tmp_path, rgba, "a.png")))
    assert np.array_equal(arr[..., 0], GRADIENT)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(GRADIENT, "L").convert("RGB")  # 64 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, image, "rot.jpg", exif=exif.tobytes(), quality=95)
    assert load_medical_image(path).size == (48, 64)


def test_content_sniffing_png_named_jpg_and_bytes_and_file_objects(tmp_path):
    path = _save(tmp_path, Image.fromarray(GRADIENT, "L"), "really_a_png.jpg", format="PNG")
    from_path = np.asarray(load_medical_image(path))
    assert np.array_equal(from_path, np.asarray(load_medical_image(path.read_bytes())))
    with open(path, "rb") as handle:
        assert np.array_equal(from_path, np.asarray(load_medical_image(handle)))


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_name_file_and_reason(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    png = io.BytesIO()
    Image.fromarray(GRADIENT, "L").save(png, format="JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    tiny = _save(tmp_path, Image.new("L", (MIN_SIDE - 1, 30)), "tiny.png")
    cases = {
        tmp_path / "missing.png": "file not found",
        tmp_path: "is a directory",
        empty: "file is empty (0 bytes)",
        text: "not a recognised image",
        cut: "truncated or corrupt",
        tiny: f"smaller than the {MIN_SIDE}-pixel minimum",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_medical_image(path)
        assert str(path) in str(info.value) and reason in str(info.value), str(info.value)
        assert info.value.path == str(path)


# --------------------------------------------------------------------- DICOM
def _write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", **elements):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    raw = np.tile(np.arange(0, 64, dtype=np.uint16) * 100, (32, 1))  # 0..6300
    # Rescale to -1000..5300 and window [0, 2000]: raw 1000 -> 0, raw 3000 -> 255.
    common = dict(RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000)
    mono2 = np.asarray(load_medical_image(_write_dicom(tmp_path / "a.dcm", raw, **common)))[..., 0].astype(int)
    assert mono2.shape == (32, 64)
    assert mono2[0, 10] == 0 and mono2[0, 30] == 255 and mono2[0, 20] == 128
    named_oddly = _write_dicom(tmp_path / "b.bin", raw, photometric="MONOCHROME1", **common)
    mono1 = np.asarray(load_medical_image(named_oddly))[..., 0].astype(int)
    assert np.array_equal(mono1, 255 - mono2)


def test_dicom_multiframe_gives_middle_frame_and_minmax_without_window(tmp_path):
    frames = np.stack([np.full((16, 16), value, np.uint16) for value in (0, 10, 20)])
    frames[:, 0, 0], frames[:, 0, 1] = 40, 0  # same range 0..40 in every frame
    arr = np.asarray(load_medical_image(_write_dicom(tmp_path / "multi.dcm", frames)))[..., 0]
    assert arr[0, 0] == 255 and arr[5, 5] == round(10 / 40 * 255)


def test_dicom_without_pixels_or_corrupt(tmp_path):
    path = _write_dicom(tmp_path / "ok.dcm", np.zeros((16, 16), np.uint16))
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(ImageLoadError, match="DICOM pixel data cannot be decoded"):
        load_medical_image(cut)
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_medical_image(tmp_path / "nopix.dcm")


# ------------------------------------------------------- shared real samples
LOADABLE_BAD_INPUTS = ["cmyk_xray.jpg", "gray16_ct.png", "gray16_xray.png", "png_bytes_named.jpg", "rgba_xray.png"]
FAILING_BAD_INPUTS = {
    "empty.png": "file is empty (0 bytes)",
    "not_an_image.jpg": "not a recognised image",
    "truncated.jpg": "truncated or corrupt (image file is truncated",
    "one_pixel_1x1.png": "image is 1x1 pixels",
    "filter_cap_malformed.json": "not a recognised image",
}


@pytest.mark.parametrize("name,reason", sorted(FAILING_BAD_INPUTS.items()))
def test_shared_bad_inputs_give_their_specific_error(sample_data_dir, name, reason):
    path = sample_data_dir / "bad_inputs" / name
    with pytest.raises(ImageLoadError) as info:
        load_medical_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_shared_corrupt_dicom_fails_at_pixel_decode(sample_data_dir):
    path = sample_data_dir / "dicom" / "corrupt_truncated.dcm"
    with pytest.raises(ImageLoadError, match="pixel data cannot be decoded.*less than expected"):
        load_medical_image(path)


def test_shared_loadable_modes_match_the_same_xray(sample_data_dir):
    """gray16/rgba/cmyk/DICOM copies of one NIH x-ray all decode to the same picture."""
    bad = sample_data_dir / "bad_inputs"
    reference = np.asarray(load_medical_image(bad / "png_bytes_named.jpg")).astype(int)
    assert reference.shape == (256, 256, 3)
    for name, tolerance in [("gray16_xray.png", 0), ("rgba_xray.png", 0), ("cmyk_xray.jpg", 2)]:
        arr = np.asarray(load_medical_image(bad / name)).astype(int)
        assert np.abs(arr - reference).mean() <= tolerance, name
    dx = np.asarray(load_medical_image(sample_data_dir / "dicom" / "generated_dx_from_real_png.dcm")).astype(int)
    assert np.array_equal(dx, reference)
    ct16 = np.asarray(load_medical_image(bad / "gray16_ct.png"))
    assert ct16.min() == 0 and ct16.max() == 255 and (ct16 == 255).mean() < 0.05


def test_every_shared_sample_kind_gives_the_same_tensor_shape(sample_data_dir):
    """One file per (folder, file type, pixel mode) of the shared samples, every DICOM, every loadable bad input."""
    from xraygpt.processors import build_processor

    eval_proc = build_processor({"name": "blip2_image_eval", "image_size": 224})
    kinds = {}
    for path in sorted(sample_data_dir.rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".dcm") or path.parent.name == "bad_inputs":
            continue
        if path.name == "corrupt_truncated.dcm":
            continue
        mode = "dicom" if path.suffix == ".dcm" else Image.open(path).mode
        kinds.setdefault((path.parent, path.suffix.lower(), mode, path.name if mode == "dicom" else ""), path)
    paths = list(kinds.values()) + [sample_data_dir / "bad_inputs" / name for name in LOADABLE_BAD_INPUTS]
    modes = {key[2] for key in kinds}
    assert {"L", "RGB", "dicom"} <= modes, modes
    for path in paths:
        tensor = eval_proc(load_medical_image(path))
        assert tensor.shape == (3, 224, 224) and tensor.isfinite().all(), path


def test_extension_never_overrides_content(tmp_path):
    """A PNG named .dcm loads as PNG; a DICOM named .png loads as DICOM."""
    png_as_dcm = _save(tmp_path, Image.fromarray(GRADIENT, "L"), "scan.dcm", format="PNG")
    assert np.array_equal(np.asarray(load_medical_image(png_as_dcm))[..., 0], GRADIENT)
    dicom_as_png = _write_dicom(tmp_path / "film.png", np.tile(np.arange(16, dtype=np.uint16), (16, 1)))
    assert np.asarray(load_medical_image(dicom_as_png))[0, 15, 0] == 255
    junk_dcm = tmp_path / "junk.dcm"
    junk_dcm.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ImageLoadError, match="junk.dcm: neither a recognised image nor a readable DICOM"):
        load_medical_image(junk_dcm)


@pytest.mark.parametrize(
    "name,size",
    [("examples_palette.dcm", (800, 350)), ("examples_ybr_color.dcm", (320, 240)), ("SC_rgb_rle_2frame.dcm", (100, 100))],
)
def test_colour_dicom_from_the_pydicom_wheel(name, size):
    """Palette, YBR and multi-frame colour DICOM (files bundled inside pydicom; read from disk, never downloaded)."""
    from pathlib import Path

    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():
        pytest.skip(f"{name} not bundled with this pydicom")
    image = load_medical_image(path)
    arr = np.asarray(image).astype(int)
    assert image.mode == "RGB" and image.size == size
    assert np.abs(arr[..., 0] - arr[..., 2]).mean() > 1  # real colour survived, not collapsed to grey
