"""The annotations bench: its survey of a set, on the bundled EMPS figure crops."""

from __future__ import annotations

from bench.bench_annotations import _survey
from emcopilot import io


def test_survey_counts_annotated_images_and_flagged_labels(examples_dir):
    emps = examples_dir / "emps"
    items = [(p, emps / "segmaps" / p.name) for p in sorted((emps / "images").glob("*.png"))]
    r = _survey(items)
    assert r["images"] == len(items) == 6
    # five of the six carry a scale bar, its label or panel letters; none of their manually
    # labelled particles lies on them
    assert r["with_annotations"] == 5 and "c363833ad2" not in r["annotation_pixels"]
    assert r["labelled_particles"] == sum(int(io.read_label_map(t).max()) for _, t in items)
    assert r["labelled_flagged"] == 0 and r["labelled_flagged_by_image"] == {}
    assert r["seconds"]["n"] == 6
    # without labels (the catalyst rows): nothing is counted against them
    bare = _survey([(p, None) for p, _ in items[:2]])
    assert bare["labelled_particles"] == 0 and bare["images"] == 2


def test_main_surveys_each_set_and_writes_its_json(examples_dir, tmp_path, monkeypatch, capsys):
    """The bench's command line (bench.common.survey_main): one line per set, the JSON written;
    here on the bundled figures as the only set, without the classical accuracy rows."""
    import json

    import bench.common
    from bench.bench_annotations import main

    emps = examples_dir / "emps"
    items = [(p, emps / "segmaps" / p.name) for p in sorted((emps / "images").glob("*.png"))]
    monkeypatch.setattr(bench.common, "survey_sets", lambda: {"bundled": items})
    out = tmp_path / "annotations.json"
    assert main(["--out", str(out), "--no-accuracy"]) == 0
    printed = capsys.readouterr().out
    assert "bundled: annotations on 5 of 6 images" in printed and f"wrote {out}" in printed
    written = json.loads(out.read_text())
    assert written["sets"]["bundled"]["with_annotations"] == 5
    assert "classical_emps_test" not in written and "machine" in written
