"""The DICOM reader on synthetic files: LUTs, windows, inversion, bit depths, RLE, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.data.dicom import image_percentiles, parse_age, parse_sex, parse_view, read_dicom, read_header
from medclf.data.imageio import box_transform, fit_square, load_image, load_with_info, scale_boxes
from medclf.errors import DataError


def test_rescale_then_window_in_modality_units(dicoms):
    # stored 0..2048 (step 10.24), HU = stored - 1024, window centre 0 width 200 (DICOM PS3.3 C.11.2.1.2.1)
    img = load_image(dicoms["ct_window"], size=201)[0]  # 8 x 201 padded to 201 x 201: row 96 holds the data
    row = load_with_info(dicoms["ct_window"], None).image[96]
    hu = np.linspace(0, 2048, 201).round() - 1024
    expected = np.rint(np.clip((hu + 0.5) / 199 + 0.5, 0, 1) * 255)
    np.testing.assert_array_equal(row, expected)
    assert row[100] == 128  # stored 1024 = 0 HU, the window centre
    assert row[0] == 0 and row[200] == 255
    assert (row[:90] == 0).all() and (row[111:] == 255).all()
    assert img.shape == (201,) and img.max() == 0  # top padding row is black


def test_window_on_8bit_ramp(dicoms):
    row = read_dicom(dicoms["window8"]).pixels[0]
    assert row.dtype == np.uint8
    assert row[96] == 0 and row[97] == 4 and row[128] == 130 and row[160] == 255


def test_monochrome1_is_the_inverse_of_its_twin(dicoms):
    m1 = load_with_info(dicoms["mono1"], None).image.astype(int)  # 24 x 32 padded to 32 x 32: rows 4..27
    m2 = load_with_info(dicoms["mono2"], None).image.astype(int)
    assert (m1[:4] == 0).all() and (m2[:4] == 0).all()  # padding is black after inversion too
    assert np.abs(m1[4:28] + m2[4:28] - 255).max() <= 1  # 1 for round-half-even ties
    assert np.corrcoef(m1[4:28].ravel(), m2[4:28].ravel())[0, 1] < -0.999
    # the deck ignores the photometric interpretation, as the seed deck did
    d1 = load_with_info(dicoms["mono1"], None, norm="deck").image
    np.testing.assert_array_equal(d1, load_with_info(dicoms["mono2"], None, norm="deck").image)


def test_16bit_rescale_deck_and_rle(dicoms):
    plain = read_dicom(dicoms["u16_plain"]).pixels
    # a positive linear rescale cannot change a percentile window
    np.testing.assert_array_equal(read_dicom(dicoms["u16_rescale"]).pixels, plain)
    deck = read_dicom(dicoms["u16_plain"], norm="deck").pixels[0]
    assert deck[0] == 0 and deck[32] == 129 and deck[63] == 255  # floor(v / 40000 * 255), v[32] = 20367
    rle = read_dicom(dicoms["rle"])
    assert read_header(dicoms["rle"])["bits_stored"] == 16
    np.testing.assert_array_equal(rle.pixels, plain)


def test_robust_percentile_window_values():
    raw = np.arange(1000, dtype=np.uint16).reshape(20, 50)  # 0.5th pct = 4.995, 99.5th = 994.005
    lo, hi = image_percentiles(raw)
    assert lo == pytest.approx(4.995) and hi == pytest.approx(994.005)
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert image_percentiles(grey) == tuple(np.percentile(grey, [0.5, 99.5]))


@pytest.mark.parametrize("name, problem", [
    ("rgb", "colour image not supported"),
    ("multiframe", "multi-frame image not supported (2 frames)"),
    ("nopixels", "no pixel data"),
    ("fake", "not a DICOM file"),
    ("truncated", "cannot decode pixel data"),  # native pixels cut short
])
def test_refused_files_are_named(dicoms, name, problem):
    with pytest.raises(DataError) as err:
        load_image(dicoms[name], 32)
    message = str(err.value)
    assert message.startswith(str(dicoms[name]) + ": ")
    assert problem in message
    assert "\n" not in message


def test_header_fields():
    assert parse_age("062Y") == 62 and parse_age("62") == 62 and parse_age("006M") == 0.5 and parse_age("") is None
    assert parse_age("abc") is None
    assert parse_view("", "view: PA") == "PA" and parse_view("ap", "") == "AP" and parse_view("", "chest") == ""
    assert parse_sex("m") == "M" and parse_sex("unknown") == ""


def test_pad_to_square_and_boxes():
    img = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], dtype=np.uint8)
    out = fit_square(img, None)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0], [10, 20, 30, 40], [50, 60, 70, 80], [0, 0, 0, 0]])
    assert box_transform((2, 4), 8) == (2.0, 0.0, 2.0)  # 2 x 4 -> 4 x 8, centred on 8 x 8: 2 rows above
    assert scale_boxes([[1, 0, 2, 2]], (2, 4), 8) == [[2.0, 2.0, 4.0, 4.0]]
    assert box_transform((1841, 1955), 256) == (256 / 1955, 0.0, 7.0)  # 1841 -> 241 rows, (256 - 241) // 2
    assert scale_boxes([[264.0, 152.0, 213.0, 379.0]], (1024, 1024), 256) == [[66.0, 38.0, 53.25, 94.75]]
    # shrinking keeps the mean (antialiased, no distortion) and returns uint8
    small = fit_square(np.full((40, 40), 100, dtype=np.uint8), 10)
    assert small.dtype == np.uint8 and small.shape == (10, 10) and (small == 100).all()


def test_png_and_jpeg_files(tmp_path):
    from PIL import Image

    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")  # RGB-encoded grey, as many exports
    deck = load_image(tmp_path / "a.png", 64, norm="deck")
    np.testing.assert_array_equal(deck[0], (np.arange(0, 256, 4) / 252 * 255).astype(np.uint8))
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png", 64), load_image(tmp_path / "a.png", 64))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        load_image(tmp_path / "bad.png", 32)


def _set_raw(path, keyword, text: bytes):
    """Rewrite one element with raw bytes pydicom would refuse to write (VR IS), as a broken producer does."""
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    tag = Tag(tag_for_keyword(keyword))
    ds._dict[tag] = RawDataElement(tag, "IS", len(text), text, 0, False, True)
    ds.save_as(path)
    return path


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
@pytest.mark.parametrize("keyword", ["NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated"])
def test_invalid_header_value_is_a_data_error(dicoms, keyword):
    path = _set_raw(dicoms["mono2"], keyword, b"1A")
    with pytest.raises(DataError) as err:
        load_image(path, 16)
    assert str(err.value) == f"{path}: invalid {keyword} '1A' (expected an integer)"


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_skip_bad_skips_an_invalid_header_value(dicom_writer, tmp_path):
    from PIL import Image

    from medclf.data.cache import Cache
    from medclf.data.prepare import prepare_folder

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,{i % 2}")
    bad = _set_raw(dicom_writer(root / "bad.dcm", rng.integers(0, 256, (16, 16), dtype=np.uint8)),
                   "NumberOfFrames", b"1A")
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["bad.dcm,1"]) + "\n")
    cache = Cache.open(prepare_folder(root, tmp_path / "labels.csv", tmp_path / "cache", size=16, workers=1,
                                      skip_bad=True, progress=False))
    assert len(cache.manifest) == 6
    assert [s["reason"] for s in cache.meta["skipped"]] == [f"{bad}: invalid NumberOfFrames '1A' (expected an integer)"]


def test_image_flat_after_its_window_is_refused(dicom_writer, tmp_path):
    # every stored value lies below the window (centre 1000, width 10), so the VOI LUT maps all of them to 0
    path = dicom_writer(tmp_path / "flat.dcm", np.tile(np.arange(0, 256, 4, dtype=np.uint8), (4, 1)),
                        WindowCenter=1000, WindowWidth=10)
    with pytest.raises(DataError) as err:
        load_image(path, 32)
    assert str(err.value) == f"{path}: image is flat after windowing (all pixels 0)"
    assert read_dicom(path, norm="deck").pixels[0, 63] == 255  # the deck ignores the window, as the seed deck did


def test_nearly_flat_image_keeps_its_detail(dicom_writer, tmp_path):
    pixels = np.full((32, 32), 100, np.uint8)
    pixels[5, 7] = 200  # 1 pixel in 1024: both percentiles are 100, so the percentile window is empty
    out = read_dicom(dicom_writer(tmp_path / "dot.dcm", pixels)).pixels
    assert out[5, 7] == 255 and out.sum() == 255  # min..max window instead of an all-black image


def test_missing_photometric_is_named(dicoms):
    import pydicom

    path = dicoms["mono2"]
    ds = pydicom.dcmread(path)
    del ds.PhotometricInterpretation
    ds.save_as(path)
    with pytest.raises(DataError) as err:
        load_image(path, 16)
    assert str(err.value) == f"{path}: PhotometricInterpretation missing (required for an image)"


def test_decoder_message_is_kept_whole(dicoms):
    with pytest.raises(DataError) as err:
        read_dicom(dicoms["truncated"])
    message = str(err.value)
    assert "less than expected (468 vs 768 bytes)" in message  # past the old 120-character cut
    assert message.endswith("or the transfer syntax may be incorrect)") and "..." not in message


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom's own warning for the cut files
def test_concurrent_reads_are_independent(synthetic_rsna, tmp_path):
    """The reader used to catch pydicom's truncation warning with `warnings.catch_warnings`, which is process-wide:
    concurrent reads refused valid files as truncated and left the warning filters changed."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    good = sorted((synthetic_rsna / "stage_2_train_images").glob("*.dcm"))[:8]
    cut = []
    for i, path in enumerate(good[:4]):
        cut.append(tmp_path / f"cut{i}.dcm")
        cut[-1].write_bytes(path.read_bytes()[:-500])  # inside the encapsulated JPEG frame
    filters = list(warnings.filters)

    def reads(worker: int) -> list[str]:
        results = []
        for i in range(40):
            path = cut[(worker + i) % 4] if i % 4 == 3 else good[(worker + i) % 8]
            try:
                read_dicom(path, size=64)
                results.append(f"{path.name}: ok")
            except DataError as err:
                results.append(str(err))
        return results

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(reads, range(8)) for r in rs]
    assert len(results) == 320
    assert sum(r.endswith(": ok") for r in results) == 240
    truncated = [r for r in results if not r.endswith(": ok")]
    assert len(truncated) == 80 and all(r.split(": ", 1)[0].split("/")[-1].startswith("cut") for r in truncated)
    assert all(r.endswith(": file is truncated (ends inside a data element)") for r in truncated)
    assert warnings.filters == filters
