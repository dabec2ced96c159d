"""Importers of the public formats (DeepPatent2 JSON, DeepPatent lists, CSV) on small hand-made files."""
import io
import json
import tarfile

import pytest
from PIL import Image

from patentclip.shards.build import build_shards
from patentclip.shards.importers import (ImportOptions, LocarnoTable, canonical_patent_key, import_csv,
                                         import_deeppatent, import_deeppatent2, normalize_locarno)


def png(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("L", size, 255)
    for x in range(3, size[0] - 3):
        im.putpixel((x, size[1] // 2), 0)
    im.save(path)
    return path


def members(tar):
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}


def test_code_and_id_normalisation():
    for v in ("07-01", "0701", "7-1", "07.01", "LOC (13) Cl. 07-01", " 07 - 01 "):
        assert normalize_locarno(v) == "07-01", v
    assert normalize_locarno("7") == "07-00" and normalize_locarno("cups") is None and normalize_locarno(None) is None
    for v in ("USD0836880-20190101", "D836,880 S", "D0836880", "usd836880", "USD0836880"):
        assert canonical_patent_key(v) == "D836880", v


@pytest.fixture()
def dp2(tmp_path):
    root = tmp_path / "dp2"
    seg = root / "Segmented_2019"
    png(seg / "USD0836880-20190101-D00001_1.png")
    png(seg / "USD0836880-20190101-D00002_1.png", (50, 60))
    png(seg / "USD0836881-20190108-D00001_1.png")
    png(seg / "USD0836882-20190115-D00001_1.png")
    recs = [
        {"patentID": "USD0836880-20190101", "patentdate": "20190101", "figid": "2", "caption": "FIG. 2 is a top view",
         "object": "cup", "aspect": "top view", "object_title": "Cup", "figure_file": "USD0836880-20190101-D00002.png",
         "subfigure_file": "USD0836880-20190101-D00002_1.png"},
        {"patentID": "USD0836880-20190101", "patentdate": "20190101", "figid": "1",
         "caption": "FIG. 1 is a front perspective view of a cup", "object": "cup", "aspect": "front perspective view",
         "object_title": "Cup", "figure_file": "USD0836880-20190101-D00001.png",
         "subfigure_file": "USD0836880-20190101-D00001_1.png"},
        {"patentID": "USD0836880-20190101", "patentdate": "20190101", "figid": "1",  # the same figure again
         "figure_file": "USD0836880-20190101-D00001.png", "subfigure_file": "USD0836880-20190101-D00001_1.png"},
        {"patentID": "USD0836881-20190108", "patentdate": "20190108", "figid": "1", "object": "lamp",
         "aspect": "side", "object_title": "Lamp", "figure_file": "x.png",
         "subfigure_file": "USD0836881-20190108-D00001_1.png"},  # not in the Locarno table
        {"patentID": "USD0836882-20190115", "patentdate": "2019-01-15", "figid": "1", "object": "bowl",
         "aspect": "front", "object_title": "Bowl", "subfigure_file": "USD0836882-20190115-D00001_1.png"},
        {"patentID": "USD0836882-20190115", "patentdate": "2019-01-15", "figid": "2", "object": "bowl",
         "subfigure_file": "USD0836882-20190115-D00002_1.png"},  # file missing
        {"patentdate": "20190101", "figid": "1", "subfigure_file": "a.png"},  # no patentID
    ]
    (root / "design2019.json").write_text(json.dumps(recs))
    (root / "locarno.csv").write_text("patent_id,class,class_name\nD836880,07-01,cups and mugs\nUSD0836882,0702,\n"
                                      "USD0000001,banana,x\n")
    return root


def test_deeppatent2_import(dp2):
    opts = ImportOptions(locarno_table=str(dp2 / "locarno.csv"))
    records, problems, stats = import_deeppatent2([dp2 / "design2019.json"], opts)
    assert stats == {"rows_read": 7, "patents_read": 3}
    assert [r.patent_id for r in records] == ["USD0836880", "USD0836882"]
    cup, bowl = records
    assert cup.grant_date == "2019-01-01" and cup.class_code == "07-01" and cup.class_name == "cups and mugs"
    assert cup.title == "Cup" and cup.object == "cup"
    assert [d.extra["figid"] for d in cup.drawings] == ["1", "2"]  # figure order, not file order
    assert [d.view for d in cup.drawings] == ["front perspective", "top"]
    assert cup.drawings[0].path == "Segmented_2019/USD0836880-20190101-D00001_1.png"  # found by name under the root
    assert bowl.class_code == "07-02" and bowl.class_name == "household goods (07-02)" and len(bowl.drawings) == 1
    kinds = sorted((p.kind, p.patent_id) for p in problems)
    assert kinds == [("class_table", None), ("duplicate_drawing", "USD0836880"), ("missing_file", "USD0836882"),
                     ("schema", None), ("unknown_class", "USD0836881")], kinds
    msg = {p.kind: p.reason for p in problems}
    assert msg["unknown_class"].startswith("design2019.json line 4: patent USD0836881: no Locarno class in")
    assert "record 7" in msg["schema"] or "line 7" in msg["schema"]
    assert "'banana' is not a Locarno class code" in msg["class_table"]
    # --missing-class other keeps it, reported
    records, problems, _ = import_deeppatent2([dp2 / "design2019.json"],
                                              ImportOptions(locarno_table=str(dp2 / "locarno.csv"),
                                                            missing_class="other"))
    assert [r.class_code for r in records] == ["07-01", "99-00", "07-02"]
    assert any(p.kind == "class_defaulted" and p.scope == "repair" for p in problems)
    # the whole figure instead of the subfigure: those files do not exist here
    records, problems, _ = import_deeppatent2([dp2 / "design2019.json"],
                                              ImportOptions(locarno_table=str(dp2 / "locarno.csv"),
                                                            image_field="figure"))
    assert sum(p.kind == "missing_file" for p in problems) >= 2


def test_deeppatent2_json_lines_with_bad_lines(dp2):
    rec = {"patentID": "USD0836880-20190101", "patentdate": "20190101", "figid": "1", "object": "cup",
           "caption": "caf\u00e9", "subfigure_file": "USD0836880-20190101-D00001_1.png"}
    raw = (json.dumps(rec, ensure_ascii=False).encode("latin-1") + b"\n" + b"{broken\n"
           + json.dumps({**rec, "figid": "2", "patentdate": "2019-99-99",
                         "subfigure_file": "USD0836880-20190101-D00002_1.png"}).encode() + b"\n")
    (dp2 / "dp2.jsonl").write_bytes(raw)
    records, problems, stats = import_deeppatent2([dp2 / "dp2.jsonl"],
                                                  ImportOptions(locarno_table=str(dp2 / "locarno.csv")))
    assert stats["rows_read"] == 3 and len(records) == 1 and len(records[0].drawings) == 2
    assert records[0].drawings[0].extra["caption"] == "caf\ufffd"
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["bad_date", "class_table", "invalid_json", "invalid_utf8"], kinds
    assert records[0].grant_date == "2019-01-01"  # the date in the patentID


def test_deeppatent2_build_makes_template_captions(dp2, tmp_path):
    caps = tmp_path / "llm.jsonl"  # keyed by the file name as DeepPatent2 gives it (found in a sub-folder)
    caps.write_text(json.dumps({"key": "USD0836882-20190115-D00001_1.png", "captions": ["An LLM's bowl."]}) + "\n")
    rep = build_shards(dp2 / "design2019.json", tmp_path / "s", input_format="deeppatent2",
                       import_options=ImportOptions(locarno_table=str(dp2 / "locarno.csv")),
                       splits=(("train", 1.0),), progress=False, captions=caps)
    assert rep["records_written"] == 2 and rep["drawings_written_total"] == 3
    assert rep["skipped_by_reason"] == {"duplicate_drawing": 1, "missing_file": 1, "schema": 1, "unknown_class": 1}
    m = members(tmp_path / "s" / "train" / "train-000000.tar")
    meta = json.loads(m["USD0836880_00.json"])
    assert meta["captions"][0] == "A front perspective view of a cup, a design in the class cups and mugs."
    assert "FIG. 1 is a front perspective view of a cup" in meta["captions"]
    assert "Cup, front perspective view." in meta["captions"] and len(meta["captions"]) >= 5
    assert meta["figid"] == "1" and meta["source_id"] == "USD0836880-20190101" and meta["orig_size"] == [40, 30]
    assert m["USD0836880_00.txt"].decode() == meta["captions"][0]
    assert json.loads(m["USD0836880_01.json"])["orig_size"] == [50, 60]
    assert json.loads(m["USD0836882_00.json"])["captions"] == ["An LLM's bowl."]
    assert rep["captions"]["drawings_matched"] == 1
    # its problems name the input file and line
    reasons = [p["reason"] for p in rep["records_skipped"] + rep["drawings_skipped"]]
    assert any(r.startswith("design2019.json line 6: patent USD0836882: image") for r in reasons), reasons


def test_deeppatent_v1_lists(tmp_path):
    root = tmp_path / "dp1"
    png(root / "images" / "USD0808607-20180227-D00000.png")
    png(root / "images" / "USD0808607-20180227-D00001.png")
    png(root / "images" / "USD0808700-20180306-D00000.png")
    png(root / "images" / "img_77.png")
    (root / "train_list.txt").write_text(
        "images/USD0808607-20180227-D00000.png 17\n"
        "images/USD0808607-20180227-D00001.png 17\n"
        "images/USD0808700-20180306-D00000.png 18\n"
        "just-one-field\n"
        "images/img_77.png 19\n"
        "images/USD0808700-20180306-D00009.png 18\n")
    table = root / "classes.json"
    table.write_text(json.dumps({"USD0808607": "26-05", "D808700": "0701", "DP-19": "21-01"}))
    opts = ImportOptions(locarno_table=str(table))
    records, problems, stats = import_deeppatent([root / "train_list.txt"], opts)
    assert [r.patent_id for r in records] == ["USD0808607", "USD0808700"]
    assert [len(r.drawings) for r in records] == [2, 1] and records[0].grant_date == "2018-02-27"
    assert records[0].class_name == "lighting apparatus (26-05)"
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["bad_line", "missing_date", "missing_file"], kinds
    # with a default date the patent without a date in its file name is kept (reported)
    records, problems, _ = import_deeppatent([root / "train_list.txt"],
                                             ImportOptions(locarno_table=str(table), default_date="2018-01-02"))
    assert [r.patent_id for r in records] == ["USD0808607", "USD0808700", "DP-19"]
    assert any(p.kind == "date_defaulted" for p in problems)
    rep = build_shards(root / "train_list.txt", tmp_path / "s", input_format="deeppatent",
                       import_options=ImportOptions(locarno_table=str(table), default_date="2018-01-02"),
                       splits=(("train", 1.0),), progress=False)
    assert rep["drawings_written_total"] == 4
    m = members(tmp_path / "s" / "train" / "train-000000.tar")
    assert json.loads(m["DP-19_00.json"])["captions"] == ["A design patent drawing in Locarno class 21-01, games, toys, "
                                                          "tents and sports goods (21-01)."]


def test_csv_patentclip_columns(tmp_path):
    root = tmp_path / "csv"
    a = png(root / "imgs" / "USD0900001-20200101-D00001.png")
    b = png(root / "imgs" / "USD0900001-20200101-D00002.png")
    c = png(root / "imgs" / "USD0900002-20200204-D00001.png")
    d = png(root / "imgs" / "USD0900003-20200204-D00001.png")
    (root / "test.csv").write_text(
        "full_path,cat\n"
        f"{a},Lighting apparatus\n"
        f"{b},lighting apparatus\n"
        f"{c},07-01\n"
        f"{d},banana\n"
        f"{root / 'imgs' / 'USD0900004-20200204-D00001.png'},07-01\n"
        "only-one-field\n")
    records, problems, stats = import_csv([root / "test.csv"], ImportOptions())
    assert [(r.patent_id, r.class_code, len(r.drawings)) for r in records] == [("USD0900001", "26-00", 2),
                                                                               ("USD0900002", "07-01", 1)]
    assert records[0].class_name == "Lighting apparatus" and records[0].grant_date == "2020-01-01"
    assert sorted(p.kind for p in problems) == ["bad_line", "missing_file", "no_drawings", "unknown_class"]
    # other column names, tab-separated, with id/date/title/view/caption columns and a class-names table
    (root / "names.csv").write_text("code,name\n07-01,cups and mugs\n")
    (root / "other.tsv").write_text(
        "image\tlabel\tpid\tdate\ttitle\tview\ttext\n"
        "imgs/USD0900001-20200101-D00001.png\t0701\tP1\t2021-05-06\tMug\tfront\tA mug from the front.\n"
        "imgs/USD0900001-20200101-D00002.png\t0701\tP1\t2021-05-06\tMug\tback\t\n"
        "imgs/USD0900002-20200204-D00001.png\t0701\tP2\t06/05/2021\tMug\tfront\tx\n")
    opts = ImportOptions(path_column="image", class_column="label", id_column="pid", date_column="date",
                         title_column="title", view_column="view", caption_column="text",
                         class_names=str(root / "names.csv"))
    records, problems, _ = import_csv([root / "other.tsv"], opts)
    assert [r.patent_id for r in records] == ["P1"] and records[0].class_name == "cups and mugs"
    assert records[0].drawings[0].captions == ("A mug from the front.",) and records[0].drawings[1].captions == ()
    assert [p.kind for p in problems] == ["bad_date"]
    rep = build_shards(root / "other.tsv", tmp_path / "s", input_format="csv", import_options=opts,
                       splits=(("train", 1.0),), progress=False)
    m = members(tmp_path / "s" / "train" / "train-000000.tar")
    assert json.loads(m["P1_00.json"])["captions"] == ["A mug from the front."]
    assert json.loads(m["P1_01.json"])["captions"][0] == "Mug, back view."
    assert rep["skipped_by_reason"] == {"bad_date": 1}
    with pytest.raises(ValueError, match="not in the header"):
        import_csv([root / "other.tsv"], ImportOptions())


def test_locarno_table_formats(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"patent_id": "USD1", "class": "07-01"}\n{bad\n'
                                      '{"patent_id": "USD1", "class": "07-02"}\n')
    t = LocarnoTable.load(tmp_path / "t.jsonl")
    assert t.lookup("USD0000001-20200101") == "07-01"
    assert len(t.problems) == 2 and "first is kept" in t.problems[1]
    (tmp_path / "t.tsv").write_text("pn\tloc\nD2\t26-05\n")
    assert LocarnoTable.load(tmp_path / "t.tsv", "pn", "loc").lookup("USD0000002") == "26-05"
    with pytest.raises(ValueError, match="no column"):
        LocarnoTable.load(tmp_path / "t.tsv")


def test_cli_build_deeppatent2(dp2, tmp_path):
    from patentclip.shards.cli import main

    rc = main(["build", "--format", "deeppatent2", "--input", str(dp2 / "design2019.json"), "--locarno-table",
               str(dp2 / "locarno.csv"), "--out", str(tmp_path / "o"), "--split", "train=1", "--no-progress",
               "--workers", "1"])
    assert rc == 0
    report = json.loads((tmp_path / "o" / "build_report.json").read_text())
    assert report["input"]["format"] == "deeppatent2" and report["records_written"] == 2
    assert "unknown_class" in (tmp_path / "o" / "build_report.txt").read_text()


def test_png_helper_is_valid(tmp_path):
    p = png(tmp_path / "x.png")
    assert Image.open(io.BytesIO(p.read_bytes())).size == (40, 30)


def test_csv_patent_from_folder_and_no_guessing_by_ambiguous_name(tmp_path):
    """Synthetic-style layout USD.../D00001.png: the patent comes from the folder; a missing D00001.png is not
    'found' in another patent's folder (the name is ambiguous), and a year in the path is not a patent number."""
    root = tmp_path / "2019"
    for pid in ("USD0900005", "USD0900007"):
        png(root / pid / "D00001.png")
        png(root / pid / "D00002.png")
    (root / "list.csv").write_text("full_path,cat\nUSD0900005/D00001.png,07-01\nUSD0900005/D00002.png,07-01\n"
                                   "USD0900006/D00001.png,07-01\nUSD0900007/D00002.png,07-01\n")
    records, problems, _ = import_csv([root / "list.csv"], ImportOptions(default_date="2019-06-01"))
    assert [(r.patent_id, [d.path for d in r.drawings]) for r in records] == [
        ("USD0900005", ["USD0900005/D00001.png", "USD0900005/D00002.png"]),
        ("USD0900007", ["USD0900007/D00002.png"])]
    missing = [p for p in problems if p.kind == "missing_file"]
    assert len(missing) == 1 and missing[0].patent_id == "USD0900006"


def test_locarno_codes_are_range_checked_and_us_classes_reported(tmp_path):
    """Locarno codes are classes 01-32 with the subclasses of LOC (14) (plus -99 and a main class -00); US
    national design classes written as the USPTO does (D15 86, D 8403, D7/1) are reported as such instead of
    being read as Locarno 15-86 or 84-03; so are out-of-range codes."""
    from patentclip.shards.importers.common import parse_locarno

    assert parse_locarno("06-13") == ("06-13", None) and parse_locarno("LOC (14) Cl. 12-16")[0] == "12-16"
    assert parse_locarno("32") == ("32-00", None) and parse_locarno("03-99")[0] == "03-99"
    for value, why in (("D15 86", "US national design class"), ("D 8403", "US national design class"),
                       ("D7/1", "US national design class"), ("15-86", "class 15 has no subclass 86"),
                       ("84-03", "there is no class 84"), ("33", "there is no class 33"),
                       ("32-01", "only 32-00"), ("00-01", "there is no class 00")):
        code, reason = parse_locarno(value)
        assert code is None and why in reason, (value, reason)
    root = tmp_path / "csv"
    paths = [png(root / f"USD090001{i}-20200101-D00001.png") for i in range(5)]
    (root / "c.csv").write_text("full_path,cat\n" + "".join(
        f"{p},{c}\n" for p, c in zip(paths, ("07-01", "D15 86", "D 8403", "15-86", "NULL"))))
    records, problems, _ = import_csv([root / "c.csv"], ImportOptions())
    assert [(r.patent_id, r.class_code) for r in records] == [("USD0900010", "07-01")]
    by_patent = {p.patent_id: p for p in problems}
    assert by_patent["USD0900011"].kind == "not_locarno" and "'D15 86' looks like a US national design class" \
        in by_patent["USD0900011"].reason and "line 3" in by_patent["USD0900011"].reason
    assert by_patent["USD0900012"].kind == "not_locarno" and "'D 8403'" in by_patent["USD0900012"].reason
    assert "class 15 has no subclass 86" in by_patent["USD0900013"].reason
    assert by_patent["USD0900014"].kind == "unknown_class"  # NULL: no class at all, not a class named "NULL"
    # the Locarno table reports the same, row by row, and keeps the good rows
    (tmp_path / "loc.csv").write_text("patent_id,class\nD1,D15 86\nD2,99-05\nD3,26-05\n")
    t = LocarnoTable.load(tmp_path / "loc.csv")
    assert t.lookup("USD0000003") == "26-05" and t.lookup("USD0000001") is None
    assert "line 2" in t.problems[0] and "US national design class" in t.problems[0]
    assert "there is no class 99" in t.problems[1]


def test_literal_null_is_missing_in_deeppatent2(tmp_path):
    """DeepPatent2's producer writes a missing object, aspect, title or caption as the string NULL: it is a missing
    value (no 'NULL' object in titles or captions, the view unspecified), not text."""
    root = tmp_path / "dp2"
    png(root / "USD0836890-20190101-D00001_1.png")
    png(root / "USD0836890-20190101-D00002_1.png")
    recs = [{"patentID": "USD0836890-20190101", "patentdate": "NULL", "figid": "1", "caption": "NULL",
             "object": "NULL", "aspect": "NULL", "object_title": "NULL", "figure_file": "NULL",
             "subfigure_file": "USD0836890-20190101-D00001_1.png"},
            {"patentID": "USD0836890-20190101", "patentdate": "20190101", "figid": "2", "caption": "FIG. 2 is a top view",
             "object": "null", "aspect": "top view", "object_title": "Null", "locarno": "NULL",
             "subfigure_file": "USD0836890-20190101-D00002_1.png"}]
    (root / "design2019.json").write_text(json.dumps(recs))
    (root / "loc.csv").write_text("patent_id,class\nUSD0836890,07-01\n")
    records, problems, _ = import_deeppatent2([root / "design2019.json"],
                                              ImportOptions(locarno_table=str(root / "loc.csv")))
    assert len(records) == 1 and problems == []
    r = records[0]
    assert r.title == "Design USD0836890" and r.grant_date == "2019-01-01" and "object" not in r.extra
    assert [d.view for d in r.drawings] == ["unspecified", "top"]
    assert "caption" not in r.drawings[0].extra and "aspect" not in r.drawings[0].extra
    assert "null" not in json.dumps([d.extra for d in r.drawings]).lower()


def test_a_too_long_image_path_is_reported_for_its_row(tmp_path):
    """A path longer than the file system allows ('File name too long') is a problem of its row, in the build
    report with its line; the build goes on and writes the other rows."""
    from patentclip.shards.cli import main

    root = tmp_path / "csv"
    good = png(root / "USD0900020-20200101-D00001.png")
    long_path = "USD0900021-20200101-" + "x" * 5000 + ".png"
    (root / "c.csv").write_text(f"full_path,cat\n{good},07-01\n{long_path},07-01\n")
    rc = main(["build", "--format", "csv", "--input", str(root / "c.csv"), "--out", str(tmp_path / "o"),
               "--split", "train=1", "--no-progress", "--workers", "1", "--default-date", "2020-01-01"])
    assert rc == 0
    report = json.loads((tmp_path / "o" / "build_report.json").read_text())
    assert report["records_written"] == 1
    text = (tmp_path / "o" / "build_report.txt").read_text()
    assert "line 3" in text and "USD0900021" in text and "the path cannot be used (File name too long)" in text
