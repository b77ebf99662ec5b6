"""The commands the README and docs/ show compose with the real config: an unknown key, a
mistyped option or an out-of-range value in a documented command fails here."""

from __future__ import annotations

import collections
import json
import re
import shlex

import pytest
import yaml
from conftest import REPO, compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep

from dcgan import models
from dcgan.cli import as_group_choice
from dcgan.config import flatten, to_dict
from dcgan.data.prepare import _image_folder_splits
from dcgan.domain_classifier import training_epochs

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STAGE = re.compile(r"python src/(prepare|classifier|train|evaluate)\.py")
# Flags of the entry points or of `dvc exp run` that are not config overrides.
NOT_OVERRIDES = {"-m", "--multirun", "--config-dir=.", "--config-name=params", "--queue", "-n"}


def _snippets(text: str) -> list[str]:
    """Shell lines of fenced code blocks and inline code spans."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    fenced = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]  # continued lines joined
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return fenced + inline


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, overrides) of every `python src/<stage>.py ...` and `dvc exp run ...` shown."""
    found = []
    for page in PAGES:
        for snippet in _snippets(page.read_text()):
            for command in snippet.split("&&"):
                command = command.split(" #")[0].strip()
                if "..." in command:  # an elided example, e.g. `dvc exp run -S ...`
                    continue
                if command.startswith("dvc exp run"):
                    words = shlex.split(command)[3:]
                    overrides = [w[2:] if w.startswith("-S") and len(w) > 2 else w for w in words if w != "-S"]
                    names = {words[i + 1] for i, w in enumerate(words[:-1]) if w == "-n"}
                    overrides = [o for o in overrides if o not in names]
                elif STAGE.match(command):  # the entry points read `+experiment=` as `experiment=`
                    overrides = [as_group_choice(word) for word in shlex.split(command)[2:]]
                else:
                    continue
                found.append((f"{page.name}: {command}", [o for o in overrides if o not in NOT_OVERRIDES]))
    return found


def _first_choice(override: str) -> str:
    """A sweep (``key=a,b``, ``range(...)``, ``interval(...)``) as its first value: the others
    compose the same way."""
    parsed = OverridesParser.create().parse_override(override)
    if not parsed.is_sweep_override():
        return override
    sweep = parsed.value()
    first = sweep.start if isinstance(sweep, IntervalSweep) else next(iter(parsed.sweep_iterator()))
    return f"{parsed.get_key_element()}={first}"


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 15
    assert any("dvc exp run" in where for where, _ in COMMANDS)


@pytest.mark.parametrize("where, overrides", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_composes(where, overrides):
    compose_config([_first_choice(o) for o in overrides])


DEFAULTS_ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+?) \|", re.M)


def _value(text: str):
    value = yaml.safe_load(text)
    try:  # YAML 1.1 reads 4e-4 as a string
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def test_the_defaults_table_matches_conf():
    rows = DEFAULTS_ROW.findall(
        (REPO / "docs/datasets.md").read_text().split("## The default recipe")[1].split("\n## ")[0]
    )
    assert len(rows) >= 15
    defaults = flatten(to_dict(compose_config()))
    assert {key: _value(text) for key, text in rows} == {key: defaults[key] for key, _ in rows}


# The parameter counts docs/datasets.md quotes: (model option, image shape, its text).
PARAMETER_COUNTS = [
    ("dcgan_mnist_deep_d", (28, 28, 1), r"`dcgan_mnist_deep_d` \(default\) \|.*?D ([\d,]+) parameters"),
    ("dcgan_mnist", (28, 28, 1), r"`dcgan_mnist` \|.*?G ([\d,]+) / D ([\d,]+) parameters"),
    ("dcgan_half", (64, 64, 3), r"`model.filters=32`: G ([\d.]+) M, D ([\d.]+) M\s+parameters"),
    ("dcgan", (64, 64, 3), r"against ([\d.]+) M and ([\d.]+) M at the full width"),
]


@pytest.mark.parametrize("model, shape, pattern", PARAMETER_COUNTS, ids=[row[0] for row in PARAMETER_COUNTS])
def test_documented_parameter_counts_are_the_built_networks(model, shape, pattern):
    quoted = re.search(pattern, (REPO / "docs/datasets.md").read_text(), re.S).groups()
    networks = models.build(compose_config([f"model={model}"]).model, shape, [-1.0, 1.0])
    counts = [network.count_params() for network in networks[-len(quoted) :]]  # D alone, or G and D
    for text, count in zip(quoted, counts):
        assert text == (f"{count:,}" if "," in text else f"{count / 1e6:.2f}"), (model, counts)


@pytest.mark.real_data
def test_documented_flower_counts_are_the_split_prepare_makes():
    """The photo counts docs quote, and the classifier epochs they lead to, as prepare and the
    classifier stage compute them from the mirror (the files are listed and split, not decoded)."""
    config = compose_config(["data=flowers64"])
    splits, described = _image_folder_splits(config.data, REPO / "data/raw")
    train, test = splits["train"][1], splits["test"][1]
    classifier = config.metrics.classifier
    steps_per_epoch = -(-train // classifier.batch_size)
    datasets, quality = ((REPO / "docs" / page).read_text() for page in ("datasets.md", "quality.md"))
    assert f"({described['source_files']:,}, of which {train:,} train)" in datasets
    assert f"FID ({test} test photos)" in datasets and f"against the {test} test" in quality
    quoted = re.search(r"([\d,]+) flower photos get (\d+) epochs instead of (\d+) \((\d+) steps\)", quality).groups()
    epochs = training_epochs(classifier, steps_per_epoch)
    assert quoted == (f"{train:,}", str(epochs), str(classifier.epochs), str(classifier.epochs * steps_per_epoch))


def test_result_rows_quote_their_metrics_files():
    """Each row of docs/results.md links the evaluate stage's reports/metrics.json of its run
    (kept in docs/results/) and quotes its FID, recall and smallest class from it, or says
    its file was not kept (rows measured before the files were)."""
    table = re.search(r"^\| recipe \|.*?(?=\n\n)", (REPO / "docs/results.md").read_text(), re.M | re.S).group()
    rows = table.splitlines()[2:]
    linked = 0
    for row in rows:
        cells = [cell.strip().strip("*") for cell in row.strip("|").split("|")]
        kept = re.fullmatch(r"\[metrics\]\((results/[\w.-]+\.json)\)", cells[-1])
        if not kept:
            assert cells[-1] in ("not kept", "-"), row
            continue
        metrics = json.loads((REPO / "docs" / kept.group(1)).read_text())
        assert f"{metrics['fid']:.2f}" in cells and f"{metrics['recall']:.2f}" in cells, row
        assert f"{100 * metrics['smallest_class_share']:.1f} %" in cells, row
        linked += 1
    assert linked, "no row links its metrics file"


def test_time_to_quality_table_quotes_the_benchmark_output():
    """docs/results.md's time-to-quality table quotes each run's best and last FID (with its
    training minutes) and the summary line from the benchmark's output kept in docs/results/."""
    page = (REPO / "docs/results.md").read_text().split("## Time to quality")[1]
    kept = re.search(r"\]\((results/time_to_quality_\w+\.txt)\)", page).group(1)
    output = (REPO / "docs" / kept).read_text()
    product_epoch = r"^(.+) epoch \d+: ([\d.]+) min of training \(.+\), FID ([\d.]+)$"
    tutorial_epoch = r"^tutorial loop epoch \d+: (\d+) s of training, FID \([\d,]+ samples\) ([\d.]+)$"
    curves = collections.defaultdict(list)
    for label, minutes, fid in re.findall(product_epoch, output, re.M):
        curves[label].append((float(fid), minutes))
    for seconds, fid in re.findall(tutorial_epoch, output, re.M):
        curves["tutorial loop"].append((float(fid), f"{int(seconds) / 60:.1f}"))
    rows = {row.split("|")[1].strip(): row for row in page.splitlines() if row.startswith("| ")}
    assert len(curves) >= 3
    for label, points in curves.items():
        for fid, minutes in (min(points), points[-1]):
            assert f"{fid:.2f} ({minutes})" in rows[label], (label, rows[label])
    assert f"`{output.strip().splitlines()[-1]}`" in page


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_reach_a_heading():
    anchors = {page.name: {_anchor(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)} for page in PAGES}
    links = [
        (page.name, target, anchor)
        for page in PAGES
        for target, anchor in re.findall(r"\]\((?:docs/)?([\w.]+\.md)?#([\w-]+)\)", page.read_text())
    ]
    assert len(links) >= 5
    assert [link for link in links if link[2] not in anchors.get(link[1] or link[0], set())] == []
