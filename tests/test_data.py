from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_image_folder
from PIL import Image

from cnnvis_cli.config import DatasetConfig
from cnnvis_cli.data import (
    UNLABELLED,
    BadSample,
    FileListSource,
    ImageFolderSource,
    SampleSet,
    collate,
    label_mapping,
    open_image,
    open_source,
    subset_indices,
)
from cnnvis_cli.errors import UserError
from cnnvis_cli.models import Preprocess

PREPROCESS = Preprocess(resize_size=40, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_image_folder_labels_by_sorted_class_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, {"pine": 1, "oak": 2})
    (root / "oak" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    source = ImageFolderSource(root, [".png"])
    assert source.class_names == ["oak", "pine"]
    assert [source.sample_id(i) for i in range(len(source))] == ["oak/img_0.png", "oak/img_1.png", "pine/img_0.png"]
    assert [source.load(i).label for i in range(3)] == [0, 0, 1]


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    source = ImageFolderSource(tmp_path, [".jpg"])
    assert source.class_names is None and source.load(0).label == UNLABELLED


def test_missing_or_empty_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"dataset folder not found: {tmp_path / 'nope'}"):
        ImageFolderSource(tmp_path / "nope", [".png"])
    with pytest.raises(UserError, match="no images"):
        ImageFolderSource(tmp_path, [".png"])


def test_file_list_with_names_indices_and_no_labels(tmp_path: Path, monkeypatch) -> None:
    write_image_folder(tmp_path, {"x": 3})
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nx/img_0.png,dog\nx/img_1.png,cat\n\nx/img_2.png\n")
    source = FileListSource(str(listing), None)
    assert source.class_names == ["cat", "dog"]
    assert [source.load(i).label for i in range(3)] == [1, 0, UNLABELLED]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tmp_path}/x/img_0.png,2\n"))
    assert FileListSource("-", None).load(0).label == 2


def test_negative_label_in_a_file_list_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a.png,-3\n")
    with pytest.raises(UserError, match="label -3 in the list file is negative"):
        FileListSource(str(tmp_path / "list.txt"), None)


def test_unreadable_image_becomes_a_bad_sample_with_its_reason(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, {"a": 1})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    test_set = SampleSet(ImageFolderSource(root, [".png"]), PREPROCESS, [0, 1])
    batch = collate([test_set[0], test_set[1]])
    assert batch.indices == [1] and batch.images.shape == (1, 3, 32, 32) and batch.images.dtype == torch.uint8
    assert len(batch.bad) == 1 and isinstance(batch.bad[0], BadSample) and batch.bad[0].sample_id == "a/broken.png"


def test_geometry_resizes_shorter_side_then_centre_crops(tmp_path: Path) -> None:
    pixels = np.zeros((20, 80, 3), dtype=np.uint8)
    pixels[:, 38:42] = 255  # a white vertical bar in the centre
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image, label, index, _ = SampleSet(ImageFolderSource(tmp_path, [".png"]), PREPROCESS, [0])[0]
    assert image.shape == (3, 32, 32) and label == UNLABELLED and index == 0
    assert image[0, :, 16].min() > 200 and image[0, :, 0].max() < 30


def test_sixteen_bit_and_palette_images_become_rgb(tmp_path: Path) -> None:
    deep = np.full((4, 4), 65535, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.new("P", (4, 4), color=3).save(tmp_path / "palette.png")
    for name in ("deep.png", "palette.png"):
        image = open_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (4, 4)
    assert np.asarray(open_image(tmp_path / "deep.png")).min() == 255


def test_label_mapping_by_name_by_order_and_fixed() -> None:
    class Named:
        class_names = ["Golden_Retriever", "tabby"]
        label_offsets = None

    assert label_mapping(Named(), ["tabby", "golden retriever", "x"], 3) == [1, 0]
    assert label_mapping(Named(), None, 2) is None
    assert label_mapping(Named(), ["a", "b"], 2) is None  # same count, other names: the dataset's order
    assert label_mapping(Named(), ["tabby", "b", "c"], 3) == [UNLABELLED, 0]  # no such class: unlabelled
    assert label_mapping(Named(), ["a", "tabby"], 2) == [UNLABELLED, 1]  # one name matches: names win

    class Fixed:
        class_names = ["tench"]
        label_offsets = (0, 217)

    assert label_mapping(Fixed(), ["whatever"], 1000) == [0, 217]
    assert label_mapping(Fixed(), None, 1) is None  # a model trained on the dataset's own classes


def test_imagenet_folders_named_by_wordnet_id_map_to_class_indices() -> None:
    from cnnvis_cli.models import imagenet_class_names

    class Wnids:
        class_names = ["n01440764", "n03888257", "n09999999"]  # tench, parachute, no such class
        label_offsets = None

    assert label_mapping(Wnids(), imagenet_class_names(), 1000) == [0, 701, UNLABELLED]


def test_subset_is_seeded_sorted_and_bounded() -> None:
    assert subset_indices(5, None, 0) == [0, 1, 2, 3, 4]
    picked = subset_indices(100, 10, seed=1)
    assert picked == sorted(picked) and len(set(picked)) == 10 and picked == subset_indices(100, 10, seed=1)
    assert picked != subset_indices(100, 10, seed=2)


def test_torchvision_dataset_not_downloaded_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset.download=true"):
        open_source(DatasetConfig(name="cifar10", root=str(tmp_path), download=False))


def test_unknown_dataset_suggests_close_names() -> None:
    with pytest.raises(UserError, match="unknown dataset 'imagefoldr'; did you mean imagefolder"):
        open_source(DatasetConfig(name="imagefoldr"))


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (4, 2), (6, 4), (16, 4)])
def test_default_workers_use_only_spare_cores(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int) -> None:
    from cnnvis_cli import data

    monkeypatch.setattr(data.os, "cpu_count", lambda: cores)
    assert data.loader_workers(None) == workers
    assert data.loader_workers(3) == 3  # a number the user set is kept


def test_boxes_from_a_csv_file_reach_the_samples(image_folder: Path, tmp_path: Path) -> None:
    from cnnvis_cli.config import DatasetConfig
    from cnnvis_cli.data import open_source

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\ncat/img_0.png,1,2,30,40\n")
    source = open_source(DatasetConfig(name="imagefolder", root=str(image_folder), boxes=str(boxes)))
    assert "object_box" in source.extra_columns and source.class_names == ["cat", "dog"]
    by_id = {source.sample_id(i): source.load(i).extras["object_box"] for i in range(len(source))}
    assert by_id["cat/img_0.png"] == "1 2 30 40" and by_id["dog/img_0.png"] == ""


@pytest.mark.parametrize(("content", "message"), [
    (None, "dataset.boxes file not found"),
    ("file,a,b\nx,1,2\n", "needs the header path,x0,y0,x1,y1"),
    ("path,x0,y0,x1,y1\ncat/img_0.png,5,5,5,9\n", "line 2: the box is empty"),
    ("path,x0,y0,x1,y1\ncat/img_0.png,a,5,5,9\n", "line 2: x0, y0, x1, y1 must be numbers"),
])
def test_a_bad_boxes_file_is_a_user_error(image_folder: Path, tmp_path: Path, content: str | None,
                                          message: str) -> None:
    from cnnvis_cli.config import DatasetConfig
    from cnnvis_cli.data import open_source
    from cnnvis_cli.errors import UserError

    boxes = tmp_path / "boxes.csv"
    if content is not None:
        boxes.write_text(content)
    with pytest.raises(UserError, match=message):
        open_source(DatasetConfig(name="imagefolder", root=str(image_folder), boxes=str(boxes)))
    with pytest.raises(UserError, match="dataset.boxes needs image files; dataset=demo has none"):
        open_source(DatasetConfig(name="demo", boxes=str(boxes)))


SHIPPED_TORCHVISION = ["alexnet", "vgg16", "vgg19_bn", "resnet18", "resnet50", "densenet121", "mobilenet_v3_large",
                       "efficientnet_b0", "convnext_tiny"]


@pytest.mark.parametrize("option", SHIPPED_TORCHVISION)
def test_model_input_is_what_the_weights_own_transforms_make(option: str, tmp_path: Path) -> None:
    """Preprocessing comes from the weights: the tensor the model gets equals `weights.transforms()` of the
    same image (resize with the weights' interpolation, centre crop, normalisation) for every shipped model."""
    import torchvision
    from helpers import run_config

    from cnnvis_cli.inference import normalise
    from cnnvis_cli.models import torchvision_preprocess

    model = run_config(f"model={option}").model
    preprocess = torchvision_preprocess(model)
    root = write_image_folder(tmp_path / "images", {"a": 1}, size=(300, 411))
    source = ImageFolderSource(root, [".png"])
    ours = normalise(SampleSet(source, preprocess, [0])[0][0][None], preprocess)[0]
    weights = torchvision.models.get_model_weights(model.name).DEFAULT
    theirs = weights.transforms()(source.load(0).image)
    assert ours.shape == theirs.shape == (3, preprocess.input_size, preprocess.input_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_interpolation_follows_the_weights_and_can_be_overridden() -> None:
    from helpers import run_config

    from cnnvis_cli.models import torchvision_preprocess

    assert torchvision_preprocess(run_config("model=efficientnet_b0").model).interpolation == "bicubic"
    assert torchvision_preprocess(run_config("model=resnet18").model).interpolation == "bilinear"
    override = run_config("model=efficientnet_b0", "model.interpolation=bilinear").model
    assert torchvision_preprocess(override).interpolation == "bilinear"
    with pytest.raises(UserError, match="model.interpolation=bicubik is not valid; did you mean bicubic"):
        run_config("model=resnet18", "model.interpolation=bicubik")


def test_a_file_list_is_csv_with_quoting_and_an_optional_header(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"x": 3})
    (tmp_path / "x" / "img_0.png").rename(tmp_path / "x" / "c,d.png")
    listing = tmp_path / "list.csv"
    listing.write_text('path,label\n"x/c,d.png",oak\nx/img_1.png,pine\n"x/img_2.png"\n', encoding="utf-8")
    source = FileListSource(str(listing), None)
    assert [source.sample_id(i).rsplit("/", 1)[1] for i in range(3)] == ["c,d.png", "img_1.png", "img_2.png"]
    assert source.class_names == ["oak", "pine"] and [source.load(i).label for i in range(3)] == [0, 1, UNLABELLED]


@pytest.mark.parametrize(("content", "message"), [
    ("a.png,oak\nb.png,1\n", r"mixes class names \(oak\) and class indices \(1\); label every line the same way"),
    ("c,d.png\n", r"line 1: the label 'd.png' looks like the end of a path that holds a comma; quote the path: "
                  r'"c,d.png"'),
    ("a.png,oak,extra\n", r"line 1: 3 fields where a line holds path or path,label"),
])
def test_a_file_list_that_would_be_read_wrong_is_refused(content: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        FileListSource(str(tmp_path / "list.csv"), None)


def test_indices_in_a_file_list_are_the_models_class_indices(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"x": 2})
    (tmp_path / "list.csv").write_text("x/img_0.png,1\nx/img_1.png,3\n")
    source = FileListSource(str(tmp_path / "list.csv"), None)
    assert source.class_names is None and [source.load(i).label for i in range(2)] == [1, 3]
    assert label_mapping(source, ["circle", "square", "triangle", "cross"], 4) is None  # index 1 is square



def test_a_picture_far_longer_than_wide_is_recorded_not_resized(tmp_path: Path) -> None:
    # a damaged header once claimed 1 x 16711681 px: resized to a 16 px shorter side that is 12 GB
    root = tmp_path / "data"
    (root / "cls").mkdir(parents=True)
    Image.new("RGB", (1, 101)).save(root / "cls" / "strip.png")
    Image.new("RGB", (2, 200)).save(root / "cls" / "fine.png")  # exactly 100 times: still a picture
    source = ImageFolderSource(root, [".png"])
    items = {source.sample_id(i): SampleSet(source, Preprocess(16, 16, (0.5,) * 3, (0.5,) * 3), [i])[0]
             for i in range(2)}
    assert isinstance(items["cls/strip.png"], BadSample)
    assert "1 x 101 px, more than 100 times as long as it is wide" in items["cls/strip.png"].reason
    assert items["cls/fine.png"][0].shape == (3, 16, 16)
