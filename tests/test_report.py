from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from helpers import cnnvis

from cnnvis_cli.errors import UserError
from cnnvis_cli.report import build_report, write_report

HOSTILE = '<script>alert("x")</script> & "oak"'


def fake_run(folder: Path, names: tuple[str, str] = ("oak", HOSTILE)) -> Path:
    """A run directory as a run leaves it, with class names that would break unescaped HTML."""
    folder.mkdir(parents=True)
    (folder / "panels").mkdir()
    summary = {"model": {"name": "net"}, "dataset": "imagefolder", "techniques": ["gradcam"], "samples": 3,
               "accuracy": 1 / 3, "unreadable": 0, "device": "cpu",
               "selection": {"selected": 2, "selected_by_reason": {"incorrect": 2, "low_confidence": 1}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    header = ["index", "sample_id", "label", "label_name", "predicted", "predicted_name", "correct", "confidence",
              "margin", "entropy", "loss"]
    rows = [[0, "a/img0.png", 0, names[0], 1, names[1], 0, 0.6, 0.2, 0.5, 1.2],
            [1, "a/img1.png", 0, names[0], 1, names[1], 0, 0.9, 0.8, 0.1, 2.5],
            [2, "b/img2.png", 1, names[1], 1, names[1], 1, 0.7, 0.4, 0.3, 0.3]]
    with (folder / "predictions.csv").open("w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    with (folder / "selected.csv").open("w", newline="") as file:
        csv.writer(file).writerows([
            ["rank", "index", "sample_id", "label_name", "predicted_name", "confidence", "margin", "entropy", "loss",
             "reasons"],
            [1, 0, "a/img0.png", names[0], names[1], 0.6, 0.2, 0.5, 1.2, "incorrect|low_confidence"],
            [2, 1, "a/img1.png", names[0], names[1], 0.9, 0.8, 0.1, 2.5, "incorrect"],
        ])
    for name in ("000000-img0.png", "000001-img1.png"):
        (folder / "panels" / name).write_bytes(b"\x89PNG")
    return folder


def test_report_holds_a_card_per_selected_sample_with_relative_images(tmp_path: Path) -> None:
    page = write_report(fake_run(tmp_path / "run")).read_text()
    assert page.count('class="card"') == 2
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["panels/000000-img0.png", "panels/000001-img1.png"]
    assert all((tmp_path / "run" / source).is_file() for source in sources)
    assert "http://" not in page and "https://" not in page  # self-contained: nothing from the network
    assert "accuracy <b>33.3%</b>" in page and "incorrect 2, low_confidence 1" in page


def test_text_from_data_is_escaped(tmp_path: Path) -> None:
    page = write_report(fake_run(tmp_path / "run")).read_text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;oak&quot;" in page
    assert page.count("<script>") == 1  # the page's own script only


def test_confusions_and_per_class_table(tmp_path: Path) -> None:
    page = write_report(fake_run(tmp_path / "run", ("oak", "building"))).read_text()
    assert ('<a class="confusion" href="#gallery" data-truth="oak" data-predicted="building">oak &rarr; building'
            '</a>: 2') in page
    assert '<td>oak</td><td class="n">2</td><td class="n">0.0%</td><td class="n">2</td><td class="n">75.0%</td>' in page
    assert '<td>building</td><td class="n">1</td><td class="n">100.0%</td><td class="n">0</td>' in page


def test_a_folder_without_a_run_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run directory at"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        build_report(tmp_path / "missing")


@pytest.mark.slow
def test_cnnvis_report_on_a_run_and_on_a_two_job_sweep(tmp_path: Path) -> None:
    sweep = cnnvis("run", "-m", "technique=gradcam,eigencam", "dataset.limit=60", "selection.max_samples=5",
                   "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    *jobs, folder = [Path(line) for line in sweep.stdout.splitlines()]  # the sweep's folder comes last
    assert folder == tmp_path / "sweep" and (folder / "report.html").is_file()
    assert len(jobs) == 2 and all((job / "report.html").is_file() for job in jobs)
    (folder / "report.html").unlink()
    (jobs[0] / "report.html").unlink()
    rebuilt = cnnvis("report", str(jobs[0]), cwd=tmp_path)
    assert rebuilt.returncode == 0 and Path(rebuilt.stdout.strip()) == jobs[0] / "report.html"
    assert (jobs[0] / "report.html").read_text().count('class="card"') == 5
    compared = cnnvis("report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "2 jobs" in page and "technique=gradcam" in page and "technique=eigencam" in page
    assert str(tmp_path) not in page  # the sweep is named by its folder, not by the machine's path
    seconds = re.findall(r'<td class="n">(\d+\.\d+)</td></tr>', page)
    assert len(seconds) == 2 and all(len(value.split(".")[1]) == 1 for value in seconds)
    assert len(re.findall(r'<img src="0/panels/', page)) == len(re.findall(r'<img src="1/panels/', page)) == 5
    missing = cnnvis("report", str(tmp_path / "nothing-here"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"cnnvis: error: no such folder: {tmp_path / 'nothing-here'}"


def with_metrics(run: Path, technique: str, deletion: float, insertion: float) -> Path:
    summary = json.loads((run / "summary.json").read_text())
    summary["metrics"] = {"names": ["deletion", "insertion"], "steps": 20, "per_technique": {technique: {
        "all maps": {"maps": 4, "deletion_auc": deletion, "insertion_auc": insertion},
        "predicted class, wrong": {"maps": 2, "deletion_auc": deletion + 0.1, "nearer_cue": 0.75,
                                  "denser_cue": 0.875}}}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_metrics_table_per_technique_and_group(tmp_path: Path) -> None:
    page = write_report(with_metrics(fake_run(tmp_path / "run"), "gradcam", 0.25, 0.5)).read_text()
    assert "Can these heatmaps be trusted?" in page
    assert ('<tr><td>gradcam</td><td>all maps</td><td class="n">4</td><td class="n">0.250</td>'
            '<td class="n">0.500</td><td></td><td></td></tr>') in page
    assert ('<td>predicted class, wrong</td><td class="n">2</td><td class="n">0.350</td><td></td>'
            '<td class="n">0.750</td><td class="n">0.875</td></tr>') in page
    assert "peak nearer the cue than the object" in page and "denser on the cue than the object" in page
    assert "Can these heatmaps" not in write_report(fake_run(tmp_path / "plain")).read_text()


def test_a_sweep_ranks_its_techniques_by_faithfulness(tmp_path: Path) -> None:
    for job, (technique, deletion, insertion) in enumerate([("gradcam", 0.3, 0.6), ("eigencam", 0.2, 0.8)]):
        with_metrics(fake_run(tmp_path / "sweep" / str(job)), technique, deletion, insertion)
    page = build_report(tmp_path / "sweep").read_text()
    ranking = page[page.index("Techniques ranked by faithfulness"):]
    first, second = "<td>1</td><td>eigencam</td><td>1</td>", "<td>2</td><td>gradcam</td><td>0</td>"
    assert ranking.index(first) < ranking.index(second)


def test_the_page_opens_with_what_the_run_found_and_links_to_its_sections(tmp_path: Path) -> None:
    run = with_metrics(fake_run(tmp_path / "run", ("oak", "building")), "gradcam", 0.25, 0.5)
    summary = json.loads((run / "summary.json").read_text())
    summary["patterns"] = {"gradcam": {"groups": [
        {"group": 0, "size": 5, "wrong": 5, "peak": [0.1, 0.9], "image": "g0.png", "members": []},
        {"group": 1, "size": 9, "wrong": 1, "peak": [0.5, 0.5], "image": "g1.png", "members": []}]}}
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run).read_text()
    findings = page[page.index("What this run found"):page.index("</ul>")]
    assert "3 test samples: 1 right, <b>2 wrong</b> (accuracy 33.3%)" in findings
    assert "most frequent confusions: oak &rarr; building (2): 2 of the 2 wrong predictions" in findings
    assert "gradcam: the maps of 88% of the 2 wrong predictions are denser on the cue than on the object" in findings
    assert "a group of 5 maps, 5 of them of wrong predictions, looks most at the bottom left" in findings
    assert "a group of 9 maps" not in findings  # mostly right: not a finding
    navigation = re.search(r'<nav class="sections">(.*?)</nav>', page).group(1)
    anchors = re.findall(r'href="#([^"]+)"', navigation)
    assert anchors == ["confusions", "metrics", "patterns", "gallery-title", "per-class"]  # no sanity check ran
    assert all(f'id="{anchor}"' in page for anchor in anchors)
    assert page.index("What this run found") < page.index('id="confusions"') < page.index('id="gallery-title"')
