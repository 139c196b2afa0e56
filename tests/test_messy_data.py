"""One data folder holding every kind of mess a real photo collection has, and what the data loader makes of it.

Each file is either decoded correctly, or skipped and counted (and named on stderr by `train`); hidden files and
files without an image suffix are not candidates at all, so they are neither used nor counted. A class left
with too few usable images is an error naming its folder and the counts.

    data/Crow/      alpha.png (RGBA)  cmyk.jpg  exif_rotated.jpg  gray.jpg  gray16.png  palette.png (P, tRNS)
                    tiny_5x7.png  nested/deeper/img.png                                          -> 8 used
                    bomb.png (30000 x 30000 header)  empty.jpg  text.jpg  truncated.jpg            -> 4 skipped
                    notes.txt  .DS_Store  ._alpha.png  .thumbnails/thumb.png                       -> ignored
    data/Éléphant/  CAFÉ.PNG  link.png -> outside/photo.png  ß_小.png  日本/猫.jpg                  -> 4 used
                    broken_link.jpg -> nowhere  loop.jpg -> loop.jpg                               -> 2 skipped
                    ._ß_小.png                                                                     -> ignored
    data/Empty/     .DS_Store                                                     (no images at all)
    data/Broken/    a.jpg (text)  b.png (0 bytes)                                 (nothing usable)
"""
import contextlib
import errno
import io
import os
import struct
import zlib

import pytest
import torch
from PIL import Image

import rollNumber_05 as ddpm
from conftest import TINY_TRAIN_FLAGS, pattern_image, run_cli

SIZE = 16
ELEPHANT = "Éléphant"
BOMB_SIDE = 30_000  # 9e8 pixels: over twice PIL's default limit, so Image.open refuses it outright

# Each usable file, in the order the loader reads it, with (row, column, RGB) that its decoded 16 x 16 image shows.
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
USED = {
    "Crow": [
        ("alpha.png", [(8, 8, (127, 127, 255))]),  # half-transparent blue on white
        ("cmyk.jpg", [(8, 8, (200, 60, 60))]),
        ("exif_rotated.jpg", [(1, 1, RED), (14, 1, BLUE)]),  # stored sideways; upright, red is on top
        ("gray.jpg", [(8, 8, (200, 200, 200))]),
        ("gray16.png", [(8, 8, (64, 64, 64))]),  # 16384 of 65535
        ("palette.png", [(2, 8, WHITE), (13, 8, (0, 160, 0))]),  # top half the transparent index
        ("tiny_5x7.png", [(0, 0, (10, 200, 10)), (8, 8, (10, 200, 10)), (15, 15, (10, 200, 10))]),  # upscaled
        ("nested/deeper/img.png", [(8, 8, (120, 60, 200))]),
    ],
    ELEPHANT: [
        ("CAFÉ.PNG", [(8, 8, (250, 200, 0))]),
        ("link.png", [(8, 8, (0, 200, 200))]),  # a symlink to a photo outside the data folder
        ("ß_小.png", [(8, 8, (90, 40, 10))]),
        ("日本/猫.jpg", [(8, 8, (30, 30, 160))]),
    ],
}
# Each unreadable file -> the exception the loader records for it.
SKIPPED = {
    "Crow/bomb.png": "DecompressionBombError",
    "Crow/empty.jpg": "UnidentifiedImageError",
    "Crow/text.jpg": "UnidentifiedImageError",
    "Crow/truncated.jpg": "OSError: image file is truncated",
    f"{ELEPHANT}/broken_link.jpg": "FileNotFoundError",
    f"{ELEPHANT}/loop.jpg": f"OSError: [Errno {errno.ELOOP}] Too many levels of symbolic links",
}
IGNORED = ["Crow/notes.txt", "Crow/.DS_Store", "Crow/._alpha.png", "Crow/.thumbnails/thumb.png",
           f"{ELEPHANT}/._ß_小.png", "Empty/.DS_Store"]


def save(img, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def noise_jpeg_bytes(size=48, seed=0):
    """A real JPEG of random pixels (so that half of its bytes cuts the compressed data, not just a header)."""
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_decompression_bomb(path, width=BOMB_SIDE, height=BOMB_SIDE):
    """A 1 x 1 PNG whose header (IHDR, with a correct CRC) claims width x height: PIL refuses it when opening,
    before decoding anything, so nothing large is ever allocated."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    assert png[12:16] == b"IHDR"  # after the 8-byte signature and the chunk's 4-byte length
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # the CRC covers the chunk type and data
    path.write_bytes(bytes(png))


def palette_with_transparent_top():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 0, 160, 0] + [0] * 762)  # index 0 black (transparent below), index 1 green
    img.paste(1, (0, 8, 16, 16))
    return img


def sideways_photo():
    """Left half red, right half blue, with EXIF orientation 6: viewed upright, red is on top."""
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    return img, exif


def write_messy_folder(root):
    crow, elephant = root / "data" / "Crow", root / "data" / ELEPHANT
    save(Image.new("RGBA", (20, 20), (0, 0, 255, 128)), crow / "alpha.png")
    save(Image.new("RGB", (20, 20), (200, 60, 60)).convert("CMYK"), crow / "cmyk.jpg", quality=95)
    img, exif = sideways_photo()
    save(img, crow / "exif_rotated.jpg", exif=exif, quality=95)
    save(Image.new("L", (20, 20), 200), crow / "gray.jpg", quality=95)
    save(Image.new("I;16", (20, 20), 16384), crow / "gray16.png")
    save(palette_with_transparent_top(), crow / "palette.png", transparency=0)
    save(Image.new("RGB", (5, 7), (10, 200, 10)), crow / "tiny_5x7.png")
    save(Image.new("RGB", (20, 20), (120, 60, 200)), crow / "nested" / "deeper" / "img.png")
    write_decompression_bomb(crow / "bomb.png")
    (crow / "empty.jpg").write_bytes(b"")
    (crow / "text.jpg").write_text("not a photo, just a caption\n")
    (crow / "truncated.jpg").write_bytes(noise_jpeg_bytes()[: len(noise_jpeg_bytes()) // 2])
    (crow / "notes.txt").write_text("photographer: unknown\n")
    (crow / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (crow / "._alpha.png").write_bytes(b"\0\5\26\7 AppleDouble")
    save(pattern_image((0, 255, 0), "checker"), crow / ".thumbnails" / "thumb.png")  # a valid image, but hidden

    save(Image.new("RGB", (20, 20), (250, 200, 0)), elephant / "CAFÉ.PNG", format="PNG")
    save(Image.new("RGB", (20, 20), (0, 200, 200)), root / "outside" / "photo.png")
    os.symlink(root / "outside" / "photo.png", elephant / "link.png")
    save(Image.new("RGB", (20, 20), (90, 40, 10)), elephant / "ß_小.png")
    save(Image.new("RGB", (20, 20), (30, 30, 160)), elephant / "日本" / "猫.jpg", quality=95)
    os.symlink(root / "nowhere.jpg", elephant / "broken_link.jpg")
    os.symlink("loop.jpg", elephant / "loop.jpg")
    (elephant / "._ß_小.png").write_bytes(b"\0\5\26\7 AppleDouble")

    (root / "data" / "Empty").mkdir()
    (root / "data" / "Empty" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "data" / "Broken").mkdir()
    (root / "data" / "Broken" / "a.jpg").write_text("not a photo\n")
    (root / "data" / "Broken" / "b.png").write_bytes(b"")
    return root / "data"


@pytest.fixture(scope="module")
def messy_data(tmp_path_factory):
    return write_messy_folder(tmp_path_factory.mktemp("messy"))


def load(root, classes, per_class):
    return ddpm.AnimalPhotos(root, classes, images_per_class=per_class, image_size=SIZE, flip=False)


@pytest.fixture(scope="module")
def messy(messy_data):
    """The two classes with images, 8 asked of each: (AnimalPhotos, its stderr, MAX_IMAGE_PIXELS before loading)."""
    limit = Image.MAX_IMAGE_PIXELS
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        data = load(messy_data, ["Crow", ELEPHANT], 8)
    return data, stderr.getvalue(), limit


def test_messy_folder_uses_the_exact_number_of_images_per_class(messy):
    data = messy[0]
    assert data.class_names == ["Crow", ELEPHANT]
    assert data.images.shape == (12, 3, SIZE, SIZE)
    assert torch.bincount(data.labels).tolist() == [8, 4]


def test_messy_folder_skips_exactly_the_unreadable_files(messy, messy_data):
    data = messy[0]
    skipped = {str(path.relative_to(messy_data)): reason for path, reason in data.skipped}
    assert sorted(skipped) == sorted(SKIPPED)
    for name, words in SKIPPED.items():
        assert skipped[name].startswith(words), f"{name}: {skipped[name]}"


def test_hidden_files_and_other_suffixes_are_neither_used_nor_counted(messy, messy_data):
    tried = {str(path.relative_to(messy_data)) for path, _ in messy[0].skipped}
    candidates = {str(p.relative_to(messy_data)) for cls in ("Crow", ELEPHANT, "Empty")
                  for p in ddpm.image_files(messy_data / cls)}
    for name in IGNORED:
        assert (messy_data / name).exists() or (messy_data / name).is_symlink()
        assert name not in tried and name not in candidates


@pytest.mark.parametrize("class_name, name, pixels", [(c, n, p) for c, files in USED.items() for n, p in files],
                         ids=[n for files in USED.values() for n, _ in files])
def test_messy_file_is_decoded_correctly(messy, class_name, name, pixels):
    data = messy[0]
    label = list(USED).index(class_name)
    index = [n for n, _ in USED[class_name]].index(name)
    image = data.images[data.labels == label][index].int()
    for row, col, rgb in pixels:
        got = image[:, row, col].tolist()
        assert all(abs(g - e) <= 6 for g, e in zip(got, rgb)), f"{name} at ({row}, {col}): {got}, expected {rgb}"


def test_decompression_bomb_is_skipped_and_the_limit_stays_on(messy):
    data, _, limit_before = messy
    [reason] = [reason for path, reason in data.skipped if path.name == "bomb.png"]
    assert f"Image size ({BOMB_SIDE ** 2} pixels) exceeds limit" in reason
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS == limit_before


def test_short_class_is_a_warning_naming_its_folder_and_counts(messy, messy_data):
    assert messy[1].strip() == (f"warning: class {ELEPHANT} has 4 usable images in {messy_data / ELEPHANT} "
                                f"(2 unreadable files skipped), 8 asked; using 4")


def test_non_ascii_class_is_chosen_case_insensitively(messy_data):
    data = load(messy_data, ["éléphant"], 4)
    assert data.class_names == [ELEPHANT] and len(data) == 4


def test_too_few_usable_images_is_an_error_naming_the_folder_and_counts(messy_data):
    with pytest.raises(ddpm.UserError) as error:
        load(messy_data, [ELEPHANT], 10)
    assert str(error.value) == (f"class {ELEPHANT} has 4 usable images in {messy_data / ELEPHANT} (2 unreadable "
                                f"files skipped), 10 asked; use --images-per-class 4 or add photos")


def test_empty_class_is_an_error_naming_the_folder(messy_data):
    with pytest.raises(ddpm.UserError) as error:
        load(messy_data, ["Empty"], 4)
    assert str(error.value) == (f"class Empty has 0 usable images in {messy_data / 'Empty'}; "
                                f"add photos or choose another class")


def test_class_of_unreadable_files_is_an_error_naming_the_folder_and_counts(messy_data):
    with pytest.raises(ddpm.UserError) as error:
        load(messy_data, ["Broken"], 4)
    assert str(error.value) == (f"class Broken has 0 usable images in {messy_data / 'Broken'} (2 unreadable files "
                                f"skipped); add photos or choose another class")


def test_train_on_the_messy_folder_exits_0_and_names_the_skipped_files(messy_data, tmp_path):
    rc, out, err = run_cli("train", "--data-dir", messy_data, "--out-dir", tmp_path / "run", *TINY_TRAIN_FLAGS,
                           "--classes", f"Crow,{ELEPHANT}", "--images-per-class", "8", "--epochs", "1", cwd=tmp_path)
    assert rc == 0, err
    assert "Traceback" not in err
    assert f"skipped {len(SKIPPED)} unreadable file(s):" in err
    for name in SKIPPED:
        assert f"  {messy_data / name}: " in err
    assert f"on 12 images of Crow, {ELEPHANT} at 16 px" in err
    assert "done: 3 steps" in err
