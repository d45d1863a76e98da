"""The prediction cache: what its key holds, and runs that reuse an earlier run's predictions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_config, write_image_folder

from cnnvis_cli import pipeline
from cnnvis_cli.cache import PredictionCache, prediction_key
from cnnvis_cli.data import open_source, subset_indices
from cnnvis_cli.errors import UserError
from cnnvis_cli.models import load_model
from cnnvis_cli.pipeline import run


def key_of(*overrides: str) -> dict | None:
    cfg = run_config(*overrides)
    source = open_source(cfg.dataset)
    loaded = load_model(cfg.model)
    indices = subset_indices(len(source), cfg.dataset.limit, cfg.dataset.seed)
    return prediction_key(cfg, loaded.preprocess, source, indices, loaded.class_names or [], None, 5, (),
                          torch.device("cpu"))


def test_key_ignores_what_does_not_change_predictions() -> None:
    base = key_of("dataset.limit=30")
    assert base == key_of("dataset.limit=30", "technique=scorecam", "selection.threshold=0.2",
                          "dataset.batch_size=7", "dataset.num_workers=1", "model.target_layer=features.0")


@pytest.mark.parametrize("change", ["dataset.limit=31", "dataset.seed=1", "topk=3", "model.input_size=48",
                                    "model.mean=[0.5,0.5,0.5]", "dataset.split=train"])
def test_key_changes_with_data_preprocessing_and_outputs(change: str) -> None:
    assert key_of("dataset.limit=30") != key_of("dataset.limit=30", change)


def test_key_follows_the_files_and_the_checkpoint(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    checkpoint = tmp_path / "weights.pt"
    torch.save(load_model(run_config().model).module.state_dict(), checkpoint)
    overrides = ("dataset=imagefolder", f"dataset.root={folder}", f"model.checkpoint={checkpoint}")
    before = key_of(*overrides)
    assert before == key_of(*overrides)
    image = folder / "cat" / "img_0.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the image was replaced
    after_image = key_of(*overrides)
    assert after_image != before
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    assert key_of(*overrides) != after_image
    (folder / "dog" / "img_2.png").write_bytes(image.read_bytes())  # one more test image
    assert key_of(*overrides) != after_image


def test_no_key_for_a_file_list_read_from_standard_input(tmp_path: Path) -> None:
    cfg = run_config("dataset=files", "dataset.list_file=-")
    assert prediction_key(cfg, load_model(cfg.model).preprocess, None, [], [], None, 5, (), torch.device("cpu")) is None


def test_second_run_reuses_the_predictions_without_inference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = write_image_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    overrides = ("dataset=imagefolder", f"dataset.root={folder}", "dataset.num_workers=0",
                 f"cache={tmp_path / 'cache'}")
    first = run(run_config(*overrides), tmp_path / "first")
    assert first.summary["predictions_from_cache"] is None

    def no_inference(*_args, **_kwargs):
        raise AssertionError("the inference stage ran again")

    monkeypatch.setattr(pipeline, "predict", no_inference)
    with caplog.at_level("INFO", logger="cnnvis"):
        second = run(run_config(*overrides, "technique=eigencam"), tmp_path / "second")
    entry = Path(second.summary["predictions_from_cache"])
    assert entry.parent == tmp_path / "cache" / "predictions"
    assert "inference skipped: reusing the 6 predictions" in caplog.text
    for name in ("predictions.csv", "predictions.npz", "errors.csv", "selected.csv"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    assert second.summary["unreadable"] == 1 and second.summary["accuracy"] == first.summary["accuracy"]
    assert json.loads((entry / "key.json").read_text())["dataset"]["root"] == str(folder)
    # with the cache off, the inference stage runs (and here fails loudly)
    with pytest.raises(AssertionError, match="ran again"):
        run(run_config(*overrides, "cache=null"), tmp_path / "third")


def test_an_unwritable_cache_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="cnnvis"):
        result = run(run_config("dataset.limit=20", f"cache={blocker}"), tmp_path / "run")
    assert result.summary["samples"] == 20
    assert "could not write the prediction cache" in caplog.text and "cache=null" in caplog.text


def test_an_entry_is_read_only_when_whole(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    key = {"any": "key"}
    assert cache.load(key) is None
    cache.store(key, {"predictions.npz": b"n", "predictions.csv": b"c"})
    assert cache.load(key) == {"predictions.npz": b"n", "predictions.csv": b"c"}
    (cache.entry(key) / "predictions.csv").unlink()
    assert cache.load(key) is None
    assert not list(cache.entry(key).parent.glob(".partial-*"))


@pytest.mark.parametrize("damage", ["truncated", "object arrays", "wrong lengths"])
def test_an_entry_that_cannot_be_read_is_replaced_with_a_log_line(damage: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    overrides = ("dataset.limit=24", f"cache={tmp_path / 'cache'}")
    first = run(run_config(*overrides), tmp_path / "first")
    entry = next((tmp_path / "cache" / "predictions").iterdir())
    stored = entry / "predictions.npz"
    if damage == "truncated":
        stored.write_bytes(stored.read_bytes()[:300])
    else:
        with np.load(stored) as arrays:
            tampered = dict(arrays)
        if damage == "object arrays":
            tampered["sample_ids"] = np.array([object()] * len(tampered["sample_ids"]), dtype=object)
        else:
            tampered["confidence"] = tampered["confidence"][:3]
        with stored.open("wb") as file:
            np.savez(file, **tampered)
    with caplog.at_level("WARNING", logger="cnnvis"):
        second = run(run_config(*overrides), tmp_path / "second")
    assert f"the cached predictions at {entry} cannot be read" in caplog.text
    assert "running inference again" in caplog.text
    assert second.summary["predictions_from_cache"] is None and second.summary["samples"] == 24
    for name in ("predictions.csv", "predictions.npz"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    assert first.summary["accuracy"] == second.summary["accuracy"]
    third = run(run_config(*overrides), tmp_path / "third")  # the entry was replaced: it serves again
    assert third.summary["predictions_from_cache"] == str(entry)


def test_strict_is_strict_whatever_the_cache_holds(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    overrides = ("dataset=imagefolder", f"dataset.root={folder}", "dataset.num_workers=0",
                 f"cache={tmp_path / 'cache'}")
    assert run(run_config(*overrides), tmp_path / "first").summary["unreadable"] == 1  # cached, unreadable included
    with pytest.raises(UserError, match=r"unreadable image cat/broken.png .*; strict=true stops here"):
        run(run_config(*overrides, "strict=true"), tmp_path / "strict")


def _entry_files() -> dict[str, bytes]:
    return {"predictions.npz": b"npz", "predictions.csv": b"csv"}


def test_a_run_waits_for_another_computing_the_same_predictions_on_this_machine(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import threading

    cache, key = PredictionCache(tmp_path), {"model": "m"}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process
    try:
        lock = cache.entry(key).with_name(cache.entry(key).name + ".lock")
        lock.parent.mkdir(parents=True)
        lock.write_text(f"{socket.gethostname()} {other.pid}")
        writer = threading.Timer(0.5, lambda: cache.store(key, _entry_files()))
        writer.start()
        claim, found = cache.claim(key, poll=0.05)  # returns only once the other run's entry is there
        writer.join()
    finally:
        other.kill()
        other.wait()
    assert claim is None and found == _entry_files()


def test_a_claim_whose_holder_died_is_taken_over_and_released(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    cache, key = PredictionCache(tmp_path), {"model": "m"}
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = cache.entry(key).with_name(cache.entry(key).name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{socket.gethostname()} {gone.stdout.strip()}")
    claim, found = cache.claim(key, poll=0.05)
    assert found is None and claim is not None and claim.lock == lock
    assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}"
    claim.release()
    assert not lock.exists()
    lock.write_text("another-machine 1")  # a holder elsewhere cannot be watched: no wait, no claim
    assert cache.claim(key, poll=0.05) == (None, None)
