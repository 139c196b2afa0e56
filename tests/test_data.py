"""AnimalPhotos and epoch_order: which files are read, how, and in what order training sees them."""
import pytest
import torch
from PIL import Image

import rollNumber_05 as ddpm
from conftest import IMAGES_PER_CLASS, pattern_image, write_class


def photos(root, **kwargs):
    kwargs = {"num_classes": 1, "images_per_class": IMAGES_PER_CLASS, "image_size": 16, "flip": False, **kwargs}
    return ddpm.AnimalPhotos(root, **kwargs)


def one_class(tmp_path, name="Cat"):
    """A data folder with one class folder, returned empty for the test to fill."""
    folder = tmp_path / "data" / name
    folder.mkdir(parents=True)
    return folder


# --- choosing classes -------------------------------------------------------------------------------------

def test_classes_are_chosen_by_name_case_insensitively(tiny_data):
    data = photos(tiny_data, class_names=["owl", "CROW"])
    assert data.class_names == ["Owl", "Crow"]
    assert data.labels.tolist() == [0] * 4 + [1] * 4


def test_without_names_the_first_n_classes_alphabetically_are_taken(tiny_data):
    data = photos(tiny_data, num_classes=2)
    assert data.class_names == ["Crow", "Fox"]


def test_counts_per_class_and_labels(tiny_data):
    data = photos(tiny_data, num_classes=3, images_per_class=3)
    assert len(data) == 9
    assert torch.bincount(data.labels).tolist() == [3, 3, 3]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_images_are_uint8_of_the_asked_size(tiny_data):
    data = photos(tiny_data, num_classes=3, image_size=16)
    assert data.images.dtype == torch.uint8
    assert data.images.shape == (12, 3, 16, 16)


def test_items_are_floats_in_minus_one_to_one_with_their_label(tiny_data):
    data = photos(tiny_data, num_classes=3)
    x, label, augment = data[5]
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert x.min().item() >= -1 and x.max().item() <= 1
    assert x.max().item() - x.min().item() > 0.3  # the stripes survive the resize
    assert label == 1
    assert torch.allclose(x, data.images[5].float() / 127.5 - 1)
    assert torch.equal(augment, torch.zeros(ddpm.AUGMENT_DIMS))  # not augmented by default


def test_classes_keep_their_colours(tiny_data):
    data = photos(tiny_data, num_classes=3)
    mean_colour = [data.images[data.labels == k].float().mean(dim=(0, 2, 3)) for k in range(3)]
    assert mean_colour[1][0] > mean_colour[1][2] + 50  # Fox: orange, red over blue
    assert mean_colour[2][2] > mean_colour[2][0] + 50  # Owl: blue over red


def test_unknown_class_is_a_user_error_listing_the_classes(tiny_data):
    with pytest.raises(ddpm.UserError, match="Unicorn.*classes there: Crow, Fox, Owl"):
        photos(tiny_data, class_names=["Unicorn"])


def test_more_classes_than_folders_is_a_user_error(tiny_data):
    with pytest.raises(ddpm.UserError, match="--num-classes 4 asked, but .* has 3 class folders"):
        photos(tiny_data, num_classes=4)


def test_missing_data_folder_is_a_user_error(tmp_path):
    with pytest.raises(ddpm.UserError, match="does not exist"):
        photos(tmp_path / "nowhere")


def test_data_folder_without_class_folders_is_a_user_error(tmp_path):
    (tmp_path / "photo.png").touch()
    with pytest.raises(ddpm.UserError, match="no class subfolders"):
        photos(tmp_path)


# --- how many images ---------------------------------------------------------------------------------------

def test_under_half_the_asked_images_is_a_user_error_saying_how_many_exist(tmp_path):
    write_class(one_class(tmp_path), (200, 0, 0), "vertical", 2)
    with pytest.raises(ddpm.UserError, match="class Cat has 2 usable images.*6 asked.*--images-per-class 2"):
        photos(tmp_path / "data", images_per_class=6)


def test_a_class_with_no_images_is_a_user_error(tmp_path):
    one_class(tmp_path)
    with pytest.raises(ddpm.UserError, match="class Cat has 0 usable images"):
        photos(tmp_path / "data", images_per_class=4)


def test_a_few_images_short_is_a_warning_and_uses_what_there_is(tmp_path, capsys):
    write_class(one_class(tmp_path), (200, 0, 0), "vertical", 3)
    data = photos(tmp_path / "data", images_per_class=5)
    assert len(data) == 3
    assert "warning: class Cat has 3 usable images" in capsys.readouterr().err


def test_only_the_asked_number_of_images_is_read_in_file_order(tmp_path):
    folder = write_class(one_class(tmp_path), (200, 0, 0), "vertical", 6)
    data = photos(tmp_path / "data", images_per_class=2)
    assert len(data) == 2
    first = ddpm.load_image(folder / "img_00.png", 16)
    assert torch.equal(data.images[0], first)


# --- which files, and how they are decoded ------------------------------------------------------------------

def test_unreadable_files_are_skipped_and_counted(tmp_path):
    folder = one_class(tmp_path)
    (folder / "000_text.jpg").write_text("this is not a JPEG")
    (folder / "001_empty.png").write_bytes(b"")
    pattern_image((200, 0, 0), "vertical").save(folder / "002_whole.jpg")
    (folder / "003_truncated.jpg").write_bytes((folder / "002_whole.jpg").read_bytes()[:200])
    write_class(folder, (200, 0, 0), "vertical", 3)
    data = photos(tmp_path / "data", images_per_class=4)
    assert len(data) == 4
    skipped = sorted(path.name for path, _ in data.skipped)
    assert skipped == ["000_text.jpg", "001_empty.png", "003_truncated.jpg"]


def test_hidden_files_and_folders_are_ignored(tmp_path):
    folder = one_class(tmp_path)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._img_00.jpg").write_bytes(b"\0\5\26\7 AppleDouble junk")
    (folder / ".cache").mkdir()
    pattern_image((0, 200, 0), "vertical").save(folder / ".cache" / "thumb.png")
    write_class(folder, (200, 0, 0), "vertical", 2)
    data = photos(tmp_path / "data", images_per_class=3)  # had the hidden image been read, there would be 3
    assert len(data) == 2
    assert not data.skipped  # ._img_00.jpg was not even tried


def test_nested_folders_are_included(tmp_path):
    folder = one_class(tmp_path)
    write_class(folder, (200, 0, 0), "vertical", 2)
    write_class(folder / "more" / "deeper", (200, 0, 0), "vertical", 2, start=10)
    data = photos(tmp_path / "data", images_per_class=4)
    assert len(data) == 4
    assert not data.skipped


def test_non_image_suffixes_are_not_read(tmp_path):
    folder = one_class(tmp_path)
    write_class(folder, (200, 0, 0), "vertical", 2)
    (folder / "notes.txt").write_text("photographer: unknown")
    pattern_image((0, 0, 200), "vertical").save(folder / "image.data", format="PNG")
    data = photos(tmp_path / "data", images_per_class=2)
    assert len(data) == 2 and not data.skipped


def save_in_mode(folder, name, img, **kwargs):
    img.save(folder / name, **kwargs)
    return folder / name


@pytest.mark.parametrize("mode, suffix", [("RGBA", ".png"), ("P", ".png"), ("L", ".png"), ("CMYK", ".jpg"),
                                          ("I;16", ".png"), ("LA", ".png"), ("1", ".png"), ("RGB", ".webp")])
def test_any_image_mode_loads_as_rgb(tmp_path, mode, suffix):
    folder = one_class(tmp_path)
    save_in_mode(folder, f"img{suffix}", pattern_image((200, 60, 60), "vertical").convert(mode))
    with Image.open(folder / f"img{suffix}") as img:
        assert img.mode == mode or suffix == ".webp"
    data = photos(tmp_path / "data", images_per_class=1)
    assert data.images.shape == (1, 3, 16, 16) and not data.skipped


def test_16_bit_greyscale_is_scaled_to_8_bit(tmp_path):
    folder = one_class(tmp_path)
    Image.new("I;16", (16, 16), 32768).save(folder / "grey16.png")
    image = ddpm.load_image(folder / "grey16.png", 16)
    assert image.min().item() >= 126 and image.max().item() <= 129  # 32768 / 256 = 128, not clipped to 255


def test_transparent_pixels_are_composited_on_white(tmp_path):
    folder = one_class(tmp_path)
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(folder / "clear.png")
    assert ddpm.load_image(folder / "clear.png", 16).min().item() >= 250


def test_exif_orientation_is_honoured(tmp_path):
    """A 2:1 photo stored sideways (left half red, right half blue) with EXIF orientation 6 (rotate 90 degrees
    clockwise to view): upright, red is on top and blue below."""
    folder = one_class(tmp_path)
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation
    stored.save(folder / "sideways.jpg", exif=exif, quality=95)
    image = ddpm.load_image(folder / "sideways.jpg", 16).int()
    top, bottom = image[:, 1, 1], image[:, 14, 1]
    assert top[0] > 200 and top[2] < 60, f"top-left pixel {top.tolist()} is not red"
    assert bottom[2] > 200 and bottom[0] < 60, f"bottom-left pixel {bottom.tolist()} is not blue"


def test_horizontal_flip_is_applied_to_items_when_asked(tiny_data):
    data = photos(tiny_data, class_names=["Fox"], flip=True)  # vertical stripes: not mirror-symmetric
    torch.manual_seed(0)
    originals = data.images[0].float() / 127.5 - 1
    seen = {torch.equal(data[0][0], originals) for _ in range(20)}
    assert seen == {True, False}


# --- batch order ---------------------------------------------------------------------------------------------

def flat(batches):
    return [i for batch in batches for i in batch]


def test_each_pass_shows_every_photo_once():
    order = flat(ddpm.step_batches(12, 4, range(9), seed=0))  # 3 passes of 3 steps
    for first in (0, 12, 24):
        assert sorted(order[first:first + 12]) == list(range(12))
    assert order[:12] != order[12:24]  # a fresh shuffle each pass


def test_a_batch_may_run_into_the_next_pass():
    order = flat(ddpm.step_batches(10, 4, range(5), seed=1))  # 20 images: 2 passes
    assert sorted(order[:10]) == sorted(order[10:]) == list(range(10))


def test_a_batch_larger_than_the_set_repeats_photos():
    [batch] = ddpm.step_batches(5, 12, range(1), seed=0)
    assert len(batch) == 12 and sorted(set(batch)) == list(range(5))
    assert sorted(batch[:10]) == sorted(list(range(5)) * 2)  # two whole passes, then a third begins


def test_batch_order_depends_only_on_step_and_seed():
    torch.manual_seed(1)
    a = ddpm.step_batches(12, 4, range(5, 6), 0)
    torch.manual_seed(2)
    torch.rand(100)
    assert a == ddpm.step_batches(12, 4, range(5, 6), 0)
    assert a != ddpm.step_batches(12, 4, range(5, 6), 1)
    assert a != ddpm.step_batches(12, 4, range(4, 5), 0)


def test_a_resumed_run_gets_the_batches_of_an_uninterrupted_one():
    assert ddpm.step_batches(12, 4, range(7, 20), 3) == ddpm.step_batches(12, 4, range(20), 3)[7:]


# --- the real photo set (skipped where it is absent) ---------------------------------------------------------

def test_real_dataset_first_classes_load(real_animals):
    data = ddpm.AnimalPhotos(real_animals, num_classes=2, images_per_class=2, image_size=16, flip=False)
    assert data.class_names == ["Bear", "Bird"]
    assert data.images.shape == (4, 3, 16, 16) and not data.skipped


def test_real_dataset_class_one_photo_short_warns(real_animals, capsys):
    data = ddpm.AnimalPhotos(real_animals, ["tiger"], images_per_class=20, image_size=8, flip=False)
    assert len(data) == 19 and data.class_names == ["Tiger"]
    assert "warning: class Tiger has 19 usable images" in capsys.readouterr().err


def test_two_processes_take_disjoint_halves_of_each_global_batch(tiny_data):
    data = photos(tiny_data, num_classes=3)  # 12 images
    ranks = [list(ddpm.batch_loader(data, range(2, 5), 6, rank, world_size=2, seed=0, on_gpu=False)) for rank in (0, 1)]
    for global_batch, (x0, labels, _), (x1, labels1, _) in zip(ddpm.step_batches(12, 6, range(2, 5), 0), *ranks):
        assert len(x0) == len(x1) == 3
        assert torch.equal(x1, ddpm.to_model_range(data.images[global_batch[1::2]]))
        assert torch.equal(labels1, data.labels[global_batch[1::2]])
        assert not set(global_batch[0::2]) & set(global_batch[1::2])
        assert torch.equal(x0, ddpm.to_model_range(data.images[global_batch[0::2]]))


@pytest.mark.filterwarnings("ignore:.*pin_memory")  # no GPU here to pin memory for
def test_the_gpu_loaders_worker_process_reads_the_same_batches(tiny_data):
    data = photos(tiny_data, num_classes=3)
    inline = list(ddpm.batch_loader(data, range(6), 4, 0, 1, seed=3, on_gpu=False))
    worker = list(ddpm.batch_loader(data, range(6), 4, 0, 1, seed=3, on_gpu=True))
    assert len(inline) == len(worker) == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, worker))
