"""The evaluation report with hostile class names (issue 15): a ``$`` in a class name or a model label is drawn
literally (matplotlib read ``$...$`` as math and the report crashed at its end), and metrics.json is written
before any figure."""
import json
from pathlib import Path

from test_report import assert_page_ok, synthetic_result

from patentclip.evaluation import report as R


def test_dollar_signs_in_class_names_and_labels_are_drawn_and_the_metrics_come_first(tmp_path):
    res, ct = synthetic_result()
    for pc in res.per_class:  # what a real class table may hold: prices, currency, a stray math-like fragment
        if pc["id"] == 2:
            pc["name"] = "x $x^$ y"
        if pc["id"] == 3:
            pc["name"], pc["code"] = "lamps $\\frac{1}{$ off", "$03-01"
    page = R.write_report(str(tmp_path), res, ct, title="report $1$", model_label="model $A^$",
                          baseline_label=None)
    assert_page_ok(Path(page), ["metrics.png", "per_class.png", "retrieval_examples.png", "embedding_map.png"])
    assert "could not be drawn" not in Path(page).read_text()
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["i2i_mAP"] == res.metrics["i2i_mAP"] and doc["per_class"][2]["name"] == "x $x^$ y"
    assert (tmp_path / "metrics.json").stat().st_mtime_ns <= (tmp_path / "metrics.png").stat().st_mtime_ns
    assert R.literal("a $b$ c") == "a \\$b\\$ c"
