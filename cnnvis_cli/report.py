"""`report.html`: one self-contained page per run directory, built from the files the run wrote
(`summary.json`, `predictions.csv`, `selected.csv`, `panels/`), so `cnnvis report RUN_DIR` can rebuild it
at any time. No network: styles and script are inline, images are linked by relative path, so the folder
can be zipped or served as it is. Every text that comes from data is HTML-escaped.

For a sweep (`cnnvis run -m ...`), `write_sweep_report` builds one page in the sweep's folder that lists
its jobs and shows the samples they share side by side, job by job.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path
from typing import Any

from cnnvis_cli.errors import UserError
from cnnvis_cli.run_dir import panel_path

REPORT = "report.html"
TOP_CONFUSIONS = 10

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; }
.facts { color: #555; } .facts b { color: #222; }
.findings { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 6px 16px; max-width: 980px; }
.findings li { margin: 4px 0; }
nav.sections { margin: 12px 0; } nav.sections a { margin-right: 14px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: left; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.controls { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #ddd; z-index: 1; }
.controls label { margin-right: 14px; } .controls select { margin-left: 4px; }
#gallery { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fafafa; max-width: 100%;
  box-sizing: border-box; }
.card img { display: block; cursor: zoom-in; background: #fff; max-width: 100%; height: auto; }
#gallery.small .card { width: 360px; } #gallery.small .card img { width: 100%; }
.card .caption { margin-bottom: 6px; font-size: 13px; }
.true { color: #1e963c; font-weight: 600; } .wrong { color: #c83c28; font-weight: 600; }
.reasons { color: #666; font-size: 12px; }
#viewer { width: 96vw; height: 94vh; max-width: 96vw; max-height: 94vh; padding: 0; border: none;
  box-sizing: border-box; overflow: hidden; }
#viewer .bar { display: flex; gap: 12px; align-items: center; padding: 8px 12px; border-bottom: 1px solid #ddd;
  height: 44px; box-sizing: border-box; }
#viewer .bar .caption { flex: 1; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
#viewer .frame { overflow: auto; height: calc(100% - 44px); background: #fff; }
#viewer .frame img { display: block; max-width: none; }
#viewer::backdrop { background: rgba(0, 0, 0, 0.7); }
a.confusion { cursor: pointer; }
.group { display: flex; gap: 12px; align-items: flex-start; margin: 10px 0; }
.group img.mean, .means img { width: 128px; height: 128px; }
img.thumb { width: 72px; height: 72px; margin: 0 4px 4px 0; }
.means { display: flex; flex-wrap: wrap; gap: 12px; } .means figure { margin: 0; font-size: 12px; width: 128px; }
.visualised-row { display: flex; flex-wrap: wrap; gap: 12px; } .visualised-row figure { margin: 0; font-size: 12px; }
img.visualised { width: 192px; height: 192px; image-rendering: auto; }
"""

SCRIPT = """
const gallery = document.getElementById('gallery');
const cards = Array.from(gallery.querySelectorAll('.card'));
const filters = ['reason', 'truth', 'predicted'];  // select ids, named as the cards' data attributes
function apply() {
  let shown = 0;
  for (const card of cards) {
    let keep = true;
    for (const key of filters) {
      const wanted = document.getElementById(key).value;
      if (!wanted) continue;
      const value = card.dataset[key];
      keep = keep && (key === 'reason' ? value.split('|').includes(wanted) : value === wanted);
    }
    card.hidden = !keep;
    shown += keep ? 1 : 0;
  }
  const [field, direction] = document.getElementById('sort').value.split(':');
  const sign = direction === 'desc' ? -1 : 1;
  const number = (card) => { const v = parseFloat(card.dataset[field]); return isNaN(v) ? -Infinity : v; };
  cards.slice().sort((a, b) => sign * (number(a) - number(b)) || a.dataset.rank - b.dataset.rank)
    .forEach((card) => gallery.appendChild(card));
  gallery.className = document.getElementById('size').value;
  document.getElementById('shown').textContent = shown;
}
for (const id of [...filters, 'sort', 'size']) {
  document.getElementById(id).addEventListener('change', apply);
}
for (const link of document.querySelectorAll('a.confusion')) {
  link.addEventListener('click', (event) => {
    event.preventDefault();
    document.getElementById('reason').value = '';
    document.getElementById('truth').value = link.dataset.truth;
    document.getElementById('predicted').value = link.dataset.predicted;
    apply();
    document.getElementById('gallery-title').scrollIntoView();
  });
}
// the viewer: a panel at its own size, scrolled where it is larger than the window; previous and next
// follow the gallery as filtered and sorted (also with the arrow keys); Escape closes it
const viewer = document.getElementById('viewer');
let current = null;
function show(card) {
  current = card;
  const image = card.querySelector('img');
  viewer.querySelector('.frame img').src = image.getAttribute('src');
  viewer.querySelector('.frame img').alt = image.alt;
  document.getElementById('viewer-file').href = image.getAttribute('src');
  viewer.querySelector('.caption').textContent = card.querySelector('.caption').textContent;
  viewer.querySelector('.frame').scrollTo(0, 0);
  if (!viewer.open) viewer.showModal();
}
function step(by) {  // through the cards shown that have a panel (a run may lack some)
  const shown = Array.from(gallery.querySelectorAll('.card'))
    .filter((card) => !card.hidden && card.querySelector('img'));
  const next = shown[shown.indexOf(current) + by];
  if (next) show(next);
}
for (const card of cards) {
  const image = card.querySelector('img');
  if (image) image.addEventListener('click', (event) => { event.preventDefault(); show(card); });
}
document.getElementById('previous').addEventListener('click', () => step(-1));
document.getElementById('next').addEventListener('click', () => step(1));
document.getElementById('close').addEventListener('click', () => viewer.close());
viewer.addEventListener('click', (event) => { if (event.target === viewer) viewer.close(); });
document.addEventListener('keydown', (event) => {
  if (!viewer.open) return;
  if (event.key === 'ArrowRight') { event.preventDefault(); step(1); }
  if (event.key === 'ArrowLeft') { event.preventDefault(); step(-1); }
});
apply();
"""


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _options(values: list[str]) -> str:
    return "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)


def hiding_marks(run: Path) -> dict[int, str]:
    """Per sample index, what hiding each technique's zoomed box did to its wrong prediction
    (metrics=[counterfactual], metrics.csv), as a line of HTML for its card."""
    marks: dict[int, list[str]] = defaultdict(list)
    for row in read_csv(run / "metrics.csv"):  # metrics.METRICS_FILE, without importing torch for a report
        flipped, right = _number(row.get("hide_box_flips", "")), _number(row.get("hide_box_to_true", ""))
        if flipped is None or right is None:
            continue
        outcome = ('<span class="true">turns it right</span>' if right == 1 else
                   "changes the class" if flipped == 1 else "keeps the class")
        marks[int(row["index"])].append(f"hiding {escape(row['technique'])}'s box {outcome}")
    return {index: "; ".join(found) for index, found in marks.items()}


def _card(row: dict[str, str], run: Path, prefix: str = "", mark: str = "") -> str:
    index = int(row["index"])
    panel = panel_path(index, row["sample_id"])
    picture = (f'<a href="{escape(prefix + panel)}"><img src="{escape(prefix + panel)}" loading="lazy" '
               f'alt="panel of sample {index}"></a>') if (run / panel).is_file() else "<p>(no panel)</p>"
    labelled = bool(row["label_name"])
    predicted_class = ("wrong" if row["label_name"] != row["predicted_name"] else "true") if labelled else ""
    confidence, loss = _number(row["confidence"]), _number(row["loss"])
    hiding = f'<br><span class="reasons">{mark}</span>' if mark else ""
    return (
        f'<div class="card" data-rank="{escape(row["rank"])}" data-reason="{escape(row["reasons"])}" '
        f'data-truth="{escape(row["label_name"])}" data-predicted="{escape(row["predicted_name"])}" '
        f'data-confidence="{escape(row["confidence"])}" data-loss="{escape(row["loss"])}">'
        f'<div class="caption">#{index} {escape(row["sample_id"])}: '
        f'true <span class="{"true" if labelled else ""}">{escape(row["label_name"] or "unlabelled")}</span>, '
        f'predicted <span class="{predicted_class}">{escape(row["predicted_name"])}</span> '
        f'({confidence:.1%}{"" if loss is None else f", loss {loss:.2f}"}) '
        f'<span class="reasons">{escape(row["reasons"].replace("|", ", "))}</span>{hiding}</div>{picture}</div>'
    )


def _per_class(predictions: list[dict[str, str]], selected: list[dict[str, str]]) -> str:
    totals: dict[str, list[float]] = defaultdict(list)
    right: Counter[str] = Counter()
    for row in predictions:
        if row["label_name"]:
            totals[row["label_name"]].append(float(row["confidence"]))
            right[row["label_name"]] += row["correct"] == "1"
    chosen = Counter(row["label_name"] for row in selected if row["label_name"])
    lines = "".join(
        f'<tr><td>{escape(name)}</td><td class="n">{len(values)}</td>'
        f'<td class="n">{right[name] / len(values):.1%}</td><td class="n">{chosen[name]}</td>'
        f'<td class="n">{sum(values) / len(values):.1%}</td></tr>'
        for name, values in sorted(totals.items())
    )
    return ("<table><tr><th>true class</th><th>samples</th><th>accuracy</th><th>selected</th>"
            f"<th>mean confidence</th></tr>{lines}</table>") if lines else "<p>No labelled samples.</p>"


def _confusions(predictions: list[dict[str, str]]) -> str:
    counts = Counter((row["label_name"], row["predicted_name"]) for row in predictions
                     if row["label_name"] and row["correct"] == "0")
    if not counts:
        return "<p>No wrong predictions.</p>"
    items = "".join(
        f'<li><a class="confusion" href="#gallery" data-truth="{escape(truth)}" data-predicted="{escape(guess)}">'
        f'{escape(truth)} &rarr; {escape(guess)}</a>: {count}</li>'
        for (truth, guess), count in counts.most_common(TOP_CONFUSIONS)
    )
    return f"<ol>{items}</ol>"


METRIC_HEADINGS = {  # summary.json key -> column heading, with the direction that is better
    "deletion_auc": "deletion AUC (lower is better)",
    "insertion_auc": "insertion AUC (higher is better)",
    "drop": "average drop (lower is better)",
    "increase": "increase in confidence (higher is better)",
    "pointing_object": "pointing game on the object",
    "energy_object": "energy in the object's box",
    "pointing_cue": "pointing game on the cue",
    "nearer_cue": "peak nearer the cue than the object",
    "energy_cue": "energy in the cue's box",
    "denser_cue": "denser on the cue than the object",
}


def _metrics(summary: dict[str, Any]) -> str:
    """The heatmap metrics per technique and group of maps, when the run computed them."""
    per_technique = summary.get("metrics", {}).get("per_technique", {})
    if not per_technique:
        return ""
    keys = [key for key in METRIC_HEADINGS
            if any(key in group for groups in per_technique.values() for group in groups.values())]
    if not keys:  # only the counterfactual test, which has its own section
        return ""
    head = "".join(f"<th>{escape(METRIC_HEADINGS[key])}</th>" for key in keys)
    lines = "".join(
        f'<tr><td>{escape(technique)}</td><td>{escape(group)}</td><td class="n">{values.get("maps", 0)}</td>'
        + "".join(f'<td class="n">{values[key]:.3f}</td>' if key in values else "<td></td>" for key in keys)
        + "</tr>"
        for technique, groups in per_technique.items() for group, values in groups.items()
    )
    return ('<h2>Can these heatmaps be trusted?</h2><p class="facts">Means over the maps of each technique '
            "(metrics.csv has one row per map).</p>"
            f"<table><tr><th>technique</th><th>which maps</th><th>maps</th>{head}</tr>{lines}</table>")


REGION_WORDS = {"box": "the box its zoom shows", "top": "its top {top_percent:g}% pixels"}


def _counterfactual_line(technique: str, region: str, found: dict[str, float], settings: dict[str, Any]) -> str:
    """One sentence of what hiding a map's region did to the wrong predictions, against the control."""
    words = REGION_WORDS[region].format(top_percent=settings.get("top_percent", 10))
    return (f"{escape(technique)}: hiding {words} ({settings.get('fill', 'blurred')} fill) turns "
            f"<b>{found['hidden_to_true']} of {found['wrong']}</b> wrong predictions right and changes "
            f"{found['hidden_flips']}; hiding a random region of the same shape: {found['random_to_true']:g} and "
            f"{found['random_flips']:g} (mean of {settings.get('draws', 0)} draws)")


def _counterfactual(summary: dict[str, Any]) -> str:
    """The counterfactual test per technique and region, when the run made it."""
    found = summary.get("counterfactual", {})
    per_technique = found.get("per_technique", {})
    if not per_technique:
        return ""
    lines = "".join(
        f'<tr><td>{escape(technique)}</td><td>{escape(REGION_WORDS[region].format(top_percent=found["top_percent"]))}'
        f'</td><td class="n">{values["area"]:.1%}</td><td class="n">{values["wrong"]}</td>'
        f'<td class="n">{values["hidden_to_true"]}</td><td class="n">{values["random_to_true"]:g}</td>'
        f'<td class="n">{values["hidden_flips"]}</td><td class="n">{values["random_flips"]:g}</td>'
        f'<td class="n">{values["hidden_pred_change"]:+.3f}</td><td class="n">{values["random_pred_change"]:+.3f}</td>'
        f'<td class="n">{values["kept_same"]}</td></tr>'
        for technique, regions in per_technique.items() for region, values in regions.items())
    return (
        '<h2>Does the region cause the prediction?</h2><p class="facts">Each wrong prediction predicted again with '
        f"the region its predicted-class map points at hidden ({escape(str(found['fill']))} fill), and, as the "
        f"control, with a region of the same shape at a random place hidden ({found['draws']} draws, the mean "
        "shown). A region is a cause when hiding it turns far more predictions than the control does. "
        "metrics.csv has the figures of every sample.</p>"
        "<table><tr><th>technique</th><th>region hidden</th><th>of the image</th><th>wrong predictions</th>"
        "<th>turned right</th><th>control: turned right</th><th>class changed</th><th>control: changed</th>"
        "<th>predicted class's probability: mean change</th><th>control</th><th>region alone keeps the class</th></tr>"
        f"{lines}</table>")


def _channels(summary: dict[str, Any]) -> str:
    """The channels the most frequent confusions rest on, with their test-set patches (analysis=[channels])."""
    found = summary.get("channels")
    if found is None:
        return ""
    parts = ["<h2>What the model sees there: channels and their examples</h2>",
             f'<p class="facts">Layer {escape(found["layer"])}: for each frequent confusion, the channels with the '
             "largest part in the predicted class's Grad-CAM maps of its wrong predictions (alpha x mean "
             "activation), each with the test-set patches where it fires most, strongest first (each patch "
             f"the {found.get('receptive_field', ['?', '?'])[0]} px receptive field of the layer's cell).</p>"]
    if not found["confusions"]:
        parts.append('<p class="facts">No confusion has 3 or more wrong predictions.</p>')
    for item in found["confusions"]:
        parts.append(f"<p><b>{escape(item['true'])} &rarr; {escape(item['predicted'])}</b> ({item['count']} wrong "
                     f"predictions, {item['weighed']} weighed): the '{escape(item['predicted'])}' prediction rests on "
                     f"channels {', '.join(str(channel['channel']) for channel in item['channels'])}, which fire on "
                     "these patches:</p>")
        parts += [f'<div class="group"><div><b>channel {channel["channel"]}</b> ({channel["share"]:.0%} of the '
                  f'maps\' positive part)<br><img src="{escape(channel["patches"])}" alt="patches that excite '
                  f'channel {channel["channel"]}"></div></div>' for channel in item["channels"]]
    return "".join(parts)


def _class_images(summary: dict[str, Any]) -> str:
    """The class images of the most frequent confusions, and of their channels (analysis=[class_images])."""
    found = summary.get("class_images")
    if found is None:
        return ""
    parts = ["<h2>What the model has learned: class images of the confusions</h2>",
             f'<p class="facts">Images optimised to drive each class\'s score ({found["steps"]} steps at '
             f'{found["size"]} px; Olah et al., 2017): what the model takes for that class, wherever it sits in the '
             "image. With analysis=[channels], the images that drive the channels the confusion's maps rest on "
             f'(layer {escape(found["layer"])}).</p>']
    if not found["confusions"]:
        parts.append('<p class="facts">No confusion has 3 or more wrong predictions.</p>')
    for item in found["confusions"]:
        tiles = [(f"true: {item['true']}", item["true_image"]), (f"predicted: {item['predicted']}",
                                                                  item["predicted_image"])]
        tiles += [(f"channel {channel['channel']}", channel["image"]) for channel in item["channels"]]
        parts.append(f"<p><b>{escape(item['true'])} &rarr; {escape(item['predicted'])}</b> "
                     f"({item['count']} wrong predictions)</p>")
        parts.append('<div class="visualised-row">' + "".join(
            f'<figure><img class="visualised" src="{escape(path)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>" for caption, path in tiles) + "</div>")
    return "".join(parts)


def _slices(summary: dict[str, Any]) -> str:
    """The slices of the test set where the model fails, when the run found them (analysis=[slices])."""
    found = summary.get("slices")
    if found is None:
        return ""
    heading = "<h2>Slices: where the failures gather in the model's features</h2>"
    if not found["slices"]:
        return (f'{heading}<p class="facts">No cluster of {escape(found["features"])} holds 3 or more wrong '
                "predictions.</p>")
    parts = [heading, f'<p class="facts">The labelled samples clustered by {escape(found["features"])} '
             f"(PCA, then k-means started from the frequent confusions), the clusters with the highest error rate "
             f"first; the error rate over all samples is {found['error_rate']:.1%}. Members: "
             "patterns/slices.csv.</p>"]
    for item in found["slices"]:
        maps = "".join(_figure(path, f"{technique}: mean map of its wrong predictions")
                       for technique, path in item["maps"].items())
        hiding = "; ".join(
            f"hiding {escape(technique)}'s box turns {figures['turned_right']} of {figures['measured']} right "
            f"(a random region: {figures['random_turned_right']:g})"
            for technique, figures in item["counterfactual"].items())
        thumbs = "".join(f'<a href="{escape(path)}"><img class="thumb" src="{escape(path)}" loading="lazy" '
                         f'alt="a wrong prediction of slice {item["slice"]}"></a>'
                         for path in item["overlays"][:THUMBNAILS])
        confusion, named = item["confusion"], item["predicted"]
        parts.append(
            f'<div class="group"><div class="means">{maps}</div><div><b>slice {item["slice"]}</b>: {item["size"]} '
            f'samples, <b>{item["wrong"]} wrong ({item["error_rate"]:.0%})</b>; its wrong predictions name '
            f'{escape(named["class"])} {named["count"]} times; most frequent confusion '
            f'{escape(confusion["true"])} &rarr; {escape(confusion["predicted"])} ({confusion["count"]})'
            f'{f"<br>{hiding}" if hiding else ""}<br>{thumbs}</div></div>')
    return "".join(parts)


THUMBNAILS = 12


def _figure(image: str, caption: str) -> str:
    text = escape(caption)
    return f'<figure><img src="{escape(image)}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _sanity(summary: dict[str, Any]) -> str:
    """The cascading randomisation table, with the techniques that fail it named."""
    sanity = summary.get("sanity")
    if not sanity or not sanity.get("stages"):
        return ""
    stages = sanity["stages"]
    techniques = list(stages[0]["techniques"])
    columns = [(f'{stage["random_layers"]} random, down to {stage["down_to"]}', stage["techniques"])
               for stage in stages]
    if sanity.get("labels"):
        columns.append(("model trained on shuffled labels", sanity["labels"]))
    head = "".join(f"<th>{escape(title)}</th>" for title, _ in columns)
    bad = set(sanity["flagged"]) | set(sanity.get("flagged_labels", []))
    lines = "".join(
        f'<tr><td class="{"wrong" if name in bad else ""}">{escape(name)}</td>' + "".join(
            f'<td class="n">{values[name]["spearman"]:.2f} / {values[name]["ssim"]:.2f}</td>'
            for _, values in columns) + "</tr>"
        for name in techniques)
    verdict = (f'<p class="wrong">Flagged: {escape(", ".join(sanity["flagged"]))}: their maps keep their order '
               f'(Spearman {sanity["flag_at"]} or more) when every layer is random, so they show the image more '
               "than the model.</p>") if sanity["flagged"] else \
        "<p>No technique's maps keep their order once every layer is random, as it should be.</p>"
    if sanity.get("flagged_labels"):
        verdict += (f'<p class="wrong">Flagged by the label test: {escape(", ".join(sanity["flagged_labels"]))}: '
                    "their maps keep their order for a model trained on shuffled labels.</p>")
    return ("<h2>Sanity check: the model's layers randomised from the top down</h2>"
            f'<p class="facts">{sanity["samples"]} samples; each cell is the mean Spearman rank correlation / '
            "SSIM of the maps with the trained model's (Adebayo et al., 2018). Spearman decides: sparse maps "
            "score a high SSIM whatever they show.</p>"
            f"<table><tr><th>technique</th>{head}</tr>{lines}</table>{verdict}")


def _outcome(item: dict[str, Any], outcome: str) -> str:
    if outcome not in item:
        return "<td></td>"
    count = item[outcome]["count"]
    return f'<td>{_figure(item[outcome]["image"], f"{outcome} ({count})")}</td>'


def _patterns(summary: dict[str, Any]) -> str:
    """Groups of samples by where the model looked, and mean maps per confusion and per class."""
    patterns = summary.get("patterns", {})
    if not patterns:
        return ""
    parts = ['<h2>What the failures have in common</h2><p class="facts">Built from the predicted-class map of '
             "every explained sample; pictures are mean maps (red: where the model looked most).</p>"]
    for technique, found in patterns.items():
        parts.append(f"<h3>{escape(technique)}</h3>")
        for group in found.get("groups", []):
            thumbs = "".join(
                f'<a href="{escape(member["overlay"])}"><img class="thumb" src="{escape(member["overlay"])}" '
                f'loading="lazy" alt="sample {member["index"]}" title="#{member["index"]} true '
                f'{escape(member["true"] or "unlabelled")}, predicted {escape(member["predicted"])}"></a>'
                for member in group["members"][:THUMBNAILS])
            more = group["size"] - min(group["size"], THUMBNAILS)
            x, y = group["peak"]
            parts.append(
                f'<div class="group"><img class="mean" src="{escape(group["image"])}" alt="mean map of group '
                f'{group["group"] + 1}"><div><b>group {group["group"] + 1}</b>: {group["size"]} samples, '
                f'{group["wrong"]} wrong; looks most at {x:.0%} across, {y:.0%} down'
                f'{f" ({more} more in patterns/groups.csv)" if more else ""}<br>{thumbs}</div></div>')
        if found.get("confusions"):
            parts.append('<p>Mean map per confusion:</p><div class="means">' + "".join(
                _figure(item["image"], f'{item["true"]} \u2192 {item["predicted"]} ({item["count"]})')
                for item in found["confusions"]) + "</div>")
        if found.get("classes"):
            rows = "".join(f'<tr><td>{escape(item["class"])}</td>{_outcome(item, "correct")}'
                           f'{_outcome(item, "wrong")}</tr>' for item in found["classes"])
            parts.append("<p>Mean map per true class:</p><table><tr><th>true class</th><th>correct predictions"
                         f"</th><th>wrong predictions</th></tr>{rows}</table>")
    return "".join(parts)


def _facts(summary: dict[str, Any]) -> str:
    accuracy = summary.get("accuracy")
    by_reason = summary.get("selection", {}).get("selected_by_reason", {})
    facts = [
        ("model", summary.get("model", {}).get("name", "?")),
        ("dataset", summary.get("dataset", "?")),
        ("techniques", ", ".join(summary.get("techniques", []))),
        ("samples", str(summary.get("samples", "?"))),
        ("accuracy", "n/a (unlabelled)" if accuracy is None else f"{accuracy:.1%}"),
        ("selected", f"{summary.get('selection', {}).get('selected', 0)} ("
                     + ", ".join(f"{name} {count}" for name, count in by_reason.items()) + ")"),
        ("unreadable", str(summary.get("unreadable", 0))),
        ("device", str(summary.get("device", "?"))),
    ]
    return " &middot; ".join(f"{escape(key)} <b>{escape(value)}</b>" for key, value in facts)


def _findings(summary: dict[str, Any], predictions: list[dict[str, str]]) -> list[str]:
    """What the run found, in numbers: a few lines of HTML (data escaped) for the top of the report."""
    labelled = [row for row in predictions if row["label_name"]]
    wrong = [row for row in labelled if row["correct"] == "0"]
    samples = summary.get("samples", len(predictions))
    lines = [f"{samples} test samples" + (
        f": {len(labelled) - len(wrong)} right, <b>{len(wrong)} wrong</b> (accuracy "
        f"{(len(labelled) - len(wrong)) / len(labelled):.1%})" if labelled else " (unlabelled)")
        + (f", {samples - len(labelled)} unlabelled" if labelled and samples > len(labelled) else "")
        + (f"; {summary['unreadable']} files could not be read (errors.csv)" if summary.get("unreadable") else "")]
    selection = summary.get("selection", {})
    reasons = ", ".join(f"{count} {escape(name)}" for name, count in selection.get("selected_by_reason", {}).items())
    lines.append(f"{selection.get('selected', 0)} selected for heatmaps ({reasons}): {summary.get('heatmaps', 0)} "
                 f"heatmaps with {escape(', '.join(summary.get('techniques', [])))}")
    confusions = Counter((row["label_name"], row["predicted_name"]) for row in wrong).most_common(3)
    if confusions:
        listed = "; ".join(f"{escape(truth)} &rarr; {escape(guess)} ({count})" for (truth, guess), count in confusions)
        share = sum(count for _, count in confusions)
        lines.append(f"most frequent confusions: {listed}: {share} of the {len(wrong)} wrong predictions")
    for technique, groups in summary.get("metrics", {}).get("per_technique", {}).items():
        lines += _metric_findings(technique, groups)
    counterfactual = summary.get("counterfactual", {})
    for technique, regions in counterfactual.get("per_technique", {}).items():
        if "box" in regions:
            lines.append(_counterfactual_line(technique, "box", regions["box"], counterfactual))
    for item in summary.get("channels", {}).get("confusions", [])[:1]:
        lines.append(f"the '{escape(item['predicted'])}' predictions of true '{escape(item['true'])}' rest most on "
                     f"channels {', '.join(str(channel['channel']) for channel in item['channels'])} of "
                     f"{escape(summary['channels']['layer'])} (their patches below)")
    slices = summary.get("slices", {}).get("slices", [])
    if slices:
        top = slices[0]
        lines.append(f"slice 1 of {len(slices)} in the model's features: {top['size']} samples, {top['wrong']} of them "
                     f"wrong ({top['error_rate']:.0%}, against {summary['slices']['error_rate']:.0%} overall); they "
                     f"name {escape(top['predicted']['class'])} {top['predicted']['count']} times")
    for technique, found in summary.get("patterns", {}).items():
        for group in found.get("groups", []):
            if group["size"] < 3 or group["wrong"] < 0.8 * group["size"]:
                continue  # only the groups of (mostly) wrong predictions are findings
            x, y = group["peak"]
            lines.append(f"{escape(technique)}: a group of {group['size']} maps, {group['wrong']} of them of wrong "
                         f"predictions, looks most at {_place(x, y)} of the image ({x:.0%} across, {y:.0%} down; "
                         f"group {group['group'] + 1} below)")
    sanity = summary.get("sanity")
    if sanity and sanity.get("stages"):
        flagged = sorted(set(sanity.get("flagged", [])) | set(sanity.get("flagged_labels", [])))
        lines.append("sanity check: " + (f'<span class="wrong">{escape(", ".join(flagged))} failed it</span>: their '
                                         "maps show the image more than the model" if flagged
                                         else "every technique's maps change when the model's layers are randomised"))
    return lines


def _place(x: float, y: float) -> str:
    """Where a point (fractions across and down) lies, in words: `the bottom left`, `the centre`."""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "the centre" if (row, column) == ("middle", "centre") else f"the {row} {column}"


def _metric_findings(technique: str, groups: dict[str, dict[str, float]]) -> list[str]:
    """The metric that says most, for the predicted-class maps of wrong predictions against right ones."""
    wrong, right = groups.get("predicted class, wrong", {}), groups.get("predicted class, correct", {})
    for key, claim in (("denser_cue", "are denser on the cue than on the object"),
                       ("pointing_object", "peak on the object")):
        if key in wrong:
            versus = f" (of the {right['maps']:.0f} right ones: {right[key]:.0%})" if key in right else ""
            return [f"{escape(technique)}: the maps of {wrong[key]:.0%} of the {wrong['maps']:.0f} wrong predictions "
                    f"{claim}{versus}"]
    everything = groups.get("all maps", {})
    labels = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC"}
    parts = [f"{label} {everything[key]:.3f}" for key, label in labels.items() if key in everything]
    return [f"{escape(technique)}: {', '.join(parts)} over all its maps"] if parts else []


def _with_id(html: str, anchor: str) -> str:
    """A section's html, its first heading given `anchor` as id when it has none (the navigation's target)."""
    if f'id="{anchor}"' in html:
        return html
    return html.replace("<h2>", f'<h2 id="{anchor}">', 1)


def _gallery(selected: list[dict[str, str]], run: Path, reasons: list[str], truths: list[str],
             guesses: list[str]) -> str:
    marks = hiding_marks(run)
    cards = "".join(_card(row, run, mark=marks.get(int(row["index"]), "")) for row in selected)
    count = len(selected)
    return f"""<h2 id="gallery-title">Selected samples (<span id="shown">{count}</span> shown of {count})</h2>
<div class="controls">
<label>reason<select id="reason"><option value="">any</option>{_options(reasons)}</select></label>
<label>true class<select id="truth"><option value="">any</option>{_options(truths)}</select></label>
<label>predicted<select id="predicted"><option value="">any</option>{_options(guesses)}</select></label>
<label>sort by<select id="sort"><option value="rank:asc">selection order</option>
<option value="confidence:asc">confidence, lowest first</option>
<option value="confidence:desc">confidence, highest first</option>
<option value="loss:desc">loss, highest first</option>
<option value="loss:asc">loss, lowest first</option></select></label>
<label>panels<select id="size"><option value="large">at their size</option>
<option value="small">small, side by side</option></select></label>
<span class="reasons">click a panel to see it whole; arrow keys go to the previous and next</span>
</div>
<div id="gallery" class="large">{cards}</div>"""


def write_report(run: Path, summary: dict[str, Any] | None = None) -> Path:
    """Build `report.html` in a run directory from its files (and its summary, when the run that is
    finishing hands it over before writing summary.json); returns its path."""
    summary_path = run / "summary.json"
    if summary is None:
        if not summary_path.is_file():
            raise UserError(f"no run directory at {run}: summary.json is missing")
        summary = json.loads(summary_path.read_text())
    predictions = read_csv(run / "predictions.csv")
    selected = read_csv(run / "selected.csv")
    reasons = list(summary.get("selection", {}).get("selected_by_reason", {}))
    truths = sorted({row["label_name"] for row in selected if row["label_name"]})
    guesses = sorted({row["predicted_name"] for row in selected})
    model, dataset = str(summary.get("model", {}).get("name", "?")), str(summary.get("dataset", "?"))
    sections = [  # (id, heading in the navigation, html); empty ones are left out
        ("confusions", "confusions", "<h2 id=\"confusions\">Most frequent confusions (true &rarr; predicted)</h2>"
                                     + _confusions(predictions)),
        ("counterfactual", "does the region cause it?", _counterfactual(summary)),
        ("metrics", "heatmap metrics", _metrics(summary)),
        ("slices", "slices", _slices(summary)),
        ("channels", "channels", _channels(summary)),
        ("class-images", "class images", _class_images(summary)),
        ("patterns", "what the failures share", _patterns(summary)),
        ("sanity", "sanity check", _sanity(summary)),
        ("gallery-title", "gallery", _gallery(selected, run, reasons, truths, guesses)),
        ("per-class", "per class", f"<h2 id=\"per-class\">Per class</h2>{_per_class(predictions, selected)}"),
    ]
    navigation = " ".join(f'<a href="#{anchor}">{escape(title)}</a>' for anchor, title, html in sections if html)
    body = "\n".join(_with_id(html, anchor) for anchor, _, html in sections if html)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cnnvis report: {escape(run.name)}</title>
<style>{STYLE}</style></head><body>
<h1>Why the model fails: {escape(model)} on {escape(dataset)}</h1>
<p class="facts">{_facts(summary)}</p>
<h2 id="findings">What this run found</h2>
<ul class="findings">{"".join(f"<li>{line}</li>" for line in _findings(summary, predictions))}</ul>
<nav class="sections">Sections: {navigation}</nav>
{body}
<dialog id="viewer" aria-label="panel viewer"><div class="bar"><span class="caption"></span>
<button id="previous" type="button" title="previous sample (left arrow key)">&lsaquo; previous</button>
<button id="next" type="button" title="next sample (right arrow key)">next &rsaquo;</button>
<a id="viewer-file" href="" target="_blank">open the PNG</a>
<button id="close" type="button" title="close (Escape)">close &times;</button></div>
<div class="frame"><img alt="full panel"></div></dialog>
<script>{SCRIPT}</script>
</body></html>
"""
    path = run / REPORT
    path.write_text(page, encoding="utf-8")
    return path


def sweep_jobs(folder: Path) -> list[Path]:
    """The job directories of a sweep folder, in job order."""
    jobs = [child for child in folder.iterdir() if child.is_dir() and (child / "summary.json").is_file()]
    return sorted(jobs, key=lambda job: (not job.name.isdigit(), int(job.name) if job.name.isdigit() else 0, job.name))


def _overrides(job: Path) -> str:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    return " ".join(line.removeprefix("- ").strip() for line in path.read_text().splitlines() if line.strip())


def _ranking(jobs: list[Path], summaries: list[dict[str, Any]]) -> str:
    """The sweep's techniques ranked by faithfulness on this model and data, when the jobs measured it."""
    entries = []
    for job, summary in zip(jobs, summaries, strict=True):
        for technique, groups in summary.get("metrics", {}).get("per_technique", {}).items():
            values = groups.get("all maps", {})
            if "deletion_auc" in values or "insertion_auc" in values:
                entries.append((job, technique, values))
    if not entries:
        return ""
    entries.sort(key=lambda entry: entry[2].get("insertion_auc", 0) - entry[2].get("deletion_auc", 0), reverse=True)
    keys = [key for key in METRIC_HEADINGS if any(key in values for _, _, values in entries)]
    if not keys:  # only the counterfactual test, which has its own section
        return ""
    head = "".join(f"<th>{escape(METRIC_HEADINGS[key])}</th>" for key in keys)
    lines = "".join(
        f'<tr><td>{rank}</td><td>{escape(technique)}</td><td>{escape(job.name)}</td>'
        + "".join(f'<td class="n">{values[key]:.3f}</td>' if key in values else "<td></td>" for key in keys)
        + "</tr>"
        for rank, (job, technique, values) in enumerate(entries, start=1)
    )
    return ("<h2>Techniques ranked by faithfulness (insertion AUC minus deletion AUC, all maps)</h2>"
            f"<table><tr><th>rank</th><th>technique</th><th>job</th>{head}</tr>{lines}</table>")


def _sweep_name(folder: Path) -> str:
    """`2026-11-26/08-00-00`: the sweep folder's date and time as Hydra names it, not the machine's path."""
    folder = folder.resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name


def _seconds(summary: dict[str, Any]) -> str:
    total = summary.get("seconds", {}).get("total")
    return "" if total is None else f"{total:.1f}"


def write_sweep_report(folder: Path) -> Path:
    """Build each job's report and one `report.html` in the sweep folder that compares the jobs."""
    jobs = sweep_jobs(folder)
    if not jobs:
        raise UserError(f"no run directory at {folder}: neither summary.json nor job folders that hold one")
    for job in jobs:
        write_report(job)
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    rows = "".join(
        f'<tr><td><a href="{escape(job.name)}/{REPORT}">{escape(job.name)}</a></td><td>{escape(_overrides(job))}</td>'
        f'<td>{escape(", ".join(summary.get("techniques", [])))}</td>'
        f'<td class="n">{"n/a" if summary.get("accuracy") is None else format(summary["accuracy"], ".1%")}</td>'
        f'<td class="n">{summary.get("selection", {}).get("selected", 0)}</td>'
        f'<td class="n">{_seconds(summary)}</td></tr>'
        for job, summary in zip(jobs, summaries, strict=True)
    )
    selected = [{row["index"]: row for row in read_csv(job / "selected.csv")} for job in jobs]
    shared = [index for index in selected[0] if all(index in chosen for chosen in selected[1:])]
    header = "".join(f"<th>job {escape(job.name)}: {escape(_overrides(job))}</th>" for job in jobs)
    lines = []
    for index in shared:
        row = selected[0][index]
        cells = "".join(
            f'<td><a href="{escape(job.name)}/{escape(panel_path(int(index), row["sample_id"]))}">'
            f'<img src="{escape(job.name)}/{escape(panel_path(int(index), row["sample_id"]))}" loading="lazy" '
            f'alt="job {escape(job.name)}, sample {escape(index)}"></a></td>'
            for job in jobs
        )
        lines.append(f'<tr><td>#{escape(index)} {escape(row["sample_id"])}<br>true '
                     f'<span class="true">{escape(row["label_name"] or "unlabelled")}</span><br>predicted '
                     f'{escape(row["predicted_name"])}</td>{cells}</tr>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cnnvis sweep: {escape(folder.name)}</title>
<style>{STYLE} table.side {{ width: 100%; }} table.side td img {{ width: 100%; height: auto; }}
table.side td:first-child {{ width: 140px; }}</style></head><body>
<h1>Sweep {escape(_sweep_name(folder))}: {len(jobs)} jobs</h1>
<table><tr><th>job</th><th>overrides</th><th>techniques</th><th>accuracy</th><th>selected</th><th>seconds</th></tr>
{rows}</table>
{_ranking(jobs, summaries)}
<h2>The samples every job selected ({len(shared)}), side by side</h2>
<table class="side"><tr><th>sample</th>{header}</tr>{"".join(lines)}</table>
</body></html>
"""
    path = folder / REPORT
    path.write_text(page, encoding="utf-8")
    return path


def build_report(path: Path) -> Path:
    """`cnnvis report PATH`: a run directory's report, or a sweep's comparison page."""
    if not path.is_dir():
        raise UserError(f"no such folder: {path}")
    return write_report(path) if (path / "summary.json").is_file() else write_sweep_report(path)
