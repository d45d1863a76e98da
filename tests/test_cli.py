"""The command's logic called in this process: listings, overrides as Hydra should read them, and the
one-line errors for mistakes found before a run starts (tests/test_command.py runs the installed command)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnvis_cli.cli import main, prepare_overrides


@pytest.mark.parametrize(("args", "message"), [
    (["run", "model=vgg17"], "cnnvis: error: unknown model 'vgg17'; did you mean vgg16"),
    (["run", "dataset=imagefolder", "dataset.root=/no/such/folder"], "dataset folder not found: /no/such/folder"),
    (["run", "selection.threshold=2"], "selection.threshold=2.0 is outside [0, 1]"),
    (["run", "-m", "technique=gradcam,scorecamm"], "unknown technique 'scorecamm'; did you mean scorecam"),
    (["run", "technique=[gradcam,scorecamm]"], "unknown technique 'scorecamm'; did you mean scorecam"),
    (["run", "dataset.root=a=b)"], "quote a value that holds special characters for Hydra, and the whole "
                                   "argument for the shell: \"dataset.root='a=b)'\""),
    (["run", "-m", "selection.threshold=0.3,1.5"], "selection.threshold=1.5 is outside [0, 1]"),
    (["run", "dataset=imagefolder", "dataset.root=/data/a,b"], "'dataset.root=/data/a,b' is a sweep (a comma separates "
     "values to try one by one); add -m to sweep, or quote a value that holds a comma: \"dataset.root='/data/a,b'\""),
    (["run", "selection.treshold=0.3"], "unknown config key 'selection.treshold'; did you mean selection.threshold"),
    (["list", "modles"], "unknown list 'modles'; did you mean models"),
    (["run", "technique=integrated_gradients", "technique.integrated_gradients.baseline=grey"],
     "technique.integrated_gradients.baseline=grey is not valid; choose one of black, mean, blurred, noise"),
    (["run", "technique=rise", "technique.rise.keep=1.5"], "technique.rise.keep=1.5 is outside [0, 1]"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(args: list[str], message: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert message in err and out == ""
    assert not (tmp_path / "outputs").exists()  # refused before a run directory was made



def listed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out


def test_list_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert "vgg16" in listed(capsys, "models")
    techniques = listed(capsys, "techniques")
    for name in ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam", "eigencam",
                 "saliency", "gradient_x_input", "guided_backprop", "guided_gradcam", "integrated_gradients",
                 "smoothgrad", "occlusion", "rise", "lrp"):
        assert f"\n  {name} " in techniques
    assert "imagenette" in listed(capsys, "datasets")
    assert "label_not_in_topk" in listed(capsys, "selections")
    metrics = "\n" + listed(capsys, "metrics")
    assert all(f"\n  {name} " in metrics for name in ("deletion", "insertion", "drop", "pointing", "energy"))
    analyses = "\n" + listed(capsys, "analyses")
    assert all(f"\n  {name} " in analyses for name in ("groups", "confusions", "classes"))
    assert "* layer4" in listed(capsys, "layers", "model=resnet18")  # no weights needed, so no download


def test_home_folder_values_are_expanded_and_quoted_where_hydra_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ann")
    assert prepare_overrides(["dataset.root=~/data/val", "-cd", "~/conf", "model.checkpoint=~/m (2).pt"]) == [
        "dataset.root=/home/ann/data/val", "-cd", "~/conf", "model.checkpoint='/home/ann/m (2).pt'"]
    assert prepare_overrides(["-m", "dataset.root=~/a,~/b"]) == ["-m", "dataset.root=/home/ann/a,/home/ann/b"]
    assert prepare_overrides(["dataset.root='~/x'", "selection.threshold=0.3"]) == [
        "dataset.root='~/x'", "selection.threshold=0.3"]  # quoted by the user: left as typed, expanded later


def test_a_bare_true_among_the_targets_is_the_target() -> None:
    assert prepare_overrides(["targets=[pred,true]", "report=true"]) == ["targets=[pred,'true']", "report=true"]


def test_a_factorys_keyword_arguments_are_the_users_own_keys() -> None:
    from cnnvis_cli.cli import compose

    whole = ["model.kwargs={num_classes: 5, depth: 18}"]
    for given in (whole, ["model.kwargs.num_classes=5", "model.kwargs.depth=18"]):
        cfg = compose(prepare_overrides(["model=custom", "model.factory=torchvision.models:resnet18", *given]))
        assert dict(cfg.model.kwargs) == {"num_classes": 5, "depth": 18}


def test_a_run_directory_under_a_file_is_a_one_line_mistake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("a file")
    assert main(["run", f"hydra.run.dir={tmp_path / 'taken' / 'run'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cnnvis: error: hydra.run.dir={tmp_path / 'taken' / 'run'} cannot be made: {tmp_path / 'taken'} is a "
        "file, not a folder; choose another hydra.run.dir")

