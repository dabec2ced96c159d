"""USPTO design grants (--format uspto): grant XML, figure descriptions, archives, bi-level sheets, label OCR,
segmentation and the importer, on real grants from ../shared/realdata/impact_sample and on hand-made sheets.

The whole-sample build (segmentation accuracy, inspect, contact sheet, training) is tests/test_uspto_sample.py.
"""
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from patentclip.shards.build import build_shards
from patentclip.shards.importers import ImportOptions, import_records
from patentclip.shards.uspto import importer as uspto_importer
from patentclip.shards.uspto.archives import Member, kind_from_name, read_member, walk_inputs
from patentclip.shards.uspto.bilevel import ink_to_grey, read_ink
from patentclip.shards.uspto.descriptions import claim_object, parse_descriptions, parse_view
from patentclip.shards.uspto.grant_xml import GrantXMLError, parse_grant, us_class
from patentclip.shards.uspto.labels import parse_label, tesseract_available
from patentclip.shards.uspto.segment import Figure, SheetResult, number_figures, segment_sheet

SPOON = "USD0909824-20210209"  # 3 sheets, 7 figures: FIG. 2 and 3 side by side on sheet 2
RAZOR = "USD0907292-20210105"  # 8 sheets, 8 figures, 7 examiner citations


def grant_xml(sample, pid):
    return (sample / pid / f"{pid}.XML").read_bytes()


def members(tar):
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


# ------------------------------------------------------------------------------------------------------------------
# Grant XML and figure descriptions
# ------------------------------------------------------------------------------------------------------------------


def test_grant_xml_fields_of_a_real_grant(impact_sample):
    g = parse_grant(grant_xml(impact_sample, RAZOR), RAZOR)
    assert (g.patent_id, g.doc_number, g.kind) == ("USD0907292", "D0907292", "S1")
    assert (g.grant_date, g.application_number, g.application_date) == ("2021-01-05", "29680800", "2019-02-20")
    assert (g.locarno, g.locarno_edition, g.locarno_raw) == ("28-03", "13", "2803")
    assert g.us_classes == ["D28/47"] and g.title == "Shaving blade cartridge"
    assert g.claim == "The ornamental design for a shaving blade cartridge, as shown and described."
    assert g.object == "shaving blade cartridge"
    assert (g.number_of_figures, g.number_of_sheets) == (8, 8)
    assert g.image_files[0].endswith("D00000.TIF") and len(g.sheet_files) == 8  # D00000 is the front page
    assert all(not f.endswith("D00000.TIF") for f in g.sheet_files)
    ex = g.examiner_citations
    assert [c.number for c in ex] == ["D633254", "D744165", "D814701", "D843059", "D845543", "D886379",
                                      "2011/0232101"]
    assert ex[0].to_dict() == {"number": "D633254", "country": "US", "kind": "S", "date": "2011-02"}
    assert len(g.citations) == 63 and sum(c.category == "cited by applicant" for c in g.citations) == 56
    assert [(f.figure, f.view) for f in g.figures] == [
        ("1", "front perspective"), ("2", "bottom"), ("3", "top perspective"), ("4", "left"), ("5", "right"),
        ("6", "rear"), ("7", "front"), ("8", "rear perspective")]
    assert g.figures[0].object == "shaving blade cartridge" and g.figures[5].view_text == "back"
    assert g.figures[1].text == "FIG. 2 is a bottom view thereof."


def test_every_sample_grant_parses_with_its_figures(impact_sample):
    for d in sorted(p for p in impact_sample.iterdir() if p.is_dir()):
        g = parse_grant(grant_xml(impact_sample, d.name), d.name)
        assert g.is_design and g.kind == "S1" and g.grant_date.startswith("2021-")
        assert g.locarno and g.title and g.application_date and g.us_classes, d.name
        assert not any(c.startswith(("0", "1", "2", "3")) and "-" in c for c in g.us_classes)  # never Locarno
        # the XML's own figure count is what the segmentation is measured against: the descriptions agree
        assert len(g.figures) == g.number_of_figures, d.name
        assert len(g.sheet_files) == g.number_of_sheets, d.name
        assert all(f.view for f in g.figures) and all(c.number for c in g.citations)


def test_hague_and_single_figure_descriptions(impact_sample):
    g = parse_grant(grant_xml(impact_sample, "USD0927435-20210810"))  # Hague: "1.1 : Front", ...
    assert [f.figure for f in g.figures] == [f"1.{i}" for i in range(1, 10)]
    assert g.figures[0].object == "Heat dissipating device for batteries or electric devices"
    assert g.figures[7].view == "perspective enlarged partial" and g.figures[8].view == "perspective environment"
    assert any("1.8 is described twice" in n for n in g.notes)
    g = parse_grant(grant_xml(impact_sample, "USD0937859-20211207"))  # "The FIGURE is a from view ..."
    assert [(f.figure, f.object) for f in g.figures] == [("1", "display screen or portion thereof with a "
                                                                "graphical user interface")]


@pytest.mark.parametrize("text,fig,view,obj", [
    ("FIG. 1 is a front perspective view of a sport spoon;", "1", "front perspective", "sport spoon"),
    ("FIG. 3 is a top view perspective view thereof;", "3", "top perspective", "cup"),
    ("FIG. 3 is a bottom thereof;", "3", "bottom", "cup"),
    ("FIG. 4 a perspective view thereof.", "4", "perspective", "cup"),
    ("FIG. 7 is a bottom plan view thereof.", "7", "bottom", "cup"),
    ("FIG. 6 is a top plan view of the keyboard shown in FIG. 1; and,", "6", "top", "keyboard"),
    ("FIG. 2 is a left-side elevational view of the game housing of FIG. 2;", "2", "left", "game housing"),
    ("FIG. 5 is a cross-sectional view taken along line 5-5 of FIG. 4;", "5", "section", "cup"),
    ("FIG. 9 is a perspective view thereof shown in an environment of use.", "9", "perspective environment", "cup"),
    ("FIG. 12A is an enlarged detail view of the handle.", "12A", "enlarged", "handle"),
    ("FIG. 8 is an exploded view thereof.", "8", "exploded", "cup"),
    ("FIG. 7 is a heel side view of the golf club head of FIG. 1;", "7", "side", "golf club head"),
    ("FIG. 2 is a second image thereof;", "2", "unspecified", "cup"),
    ("FIG. 1 is a front view of a display screen or portion thereof with animated graphical user interface "
     "showing a first image;", "1", "front", "display screen or portion thereof with animated graphical user "
                                              "interface"),
])
def test_figure_description_parsing(text, fig, view, obj):
    figs, _ = parse_descriptions(["FIG. 10 is a front view of a cup.", text] if fig != "1" else [text])
    d = figs[-1]
    assert (d.figure, d.view, d.object) == (fig, view, obj)


def test_non_figure_paragraphs_and_hague_headings():
    figs, notes = parse_descriptions([
        "1. Belt buckle", "1.1 : Perspective", "1.2 : Front", "The broken lines form no part of the claimed design.",
        "FIGS. 1-4 show the first embodiment."])
    assert [(f.figure, f.view, f.object) for f in figs] == [("1.1", "perspective", "Belt buckle"),
                                                           ("1.2", "front", "Belt buckle")]
    assert parse_view("front, bottom, right-side perspective") == ("front right bottom perspective",
                                                                  "front, bottom, right-side perspective")
    assert parse_view("reference")[0] == "reference"  # others as written
    assert claim_object("I claim the ornamental design for a “fan and light mounting system,” as shown.") == \
        "fan and light mounting system"


def test_us_classes_and_bad_xml(tmp_path):
    assert [us_class(v) for v in ("D28 47", "D 2728", " 30 50", "D14486", "D 5 59")] == \
        ["D28/47", "D2/728", "30/50", "D14/486", "D5/59"]
    with pytest.raises(GrantXMLError, match="not well-formed"):
        parse_grant(b"<us-patent-grant><us-bibliographic-data-grant>", "x.XML")
    with pytest.raises(GrantXMLError, match="root element is <patent>"):
        parse_grant(b"<patent/>", "x.XML")
    # a named entity the DTD would define is resolved without the DTD
    xml = (b"<us-patent-grant><us-bibliographic-data-grant><publication-reference><document-id><country>US"
           b"</country><doc-number>D0900001</doc-number><kind>S1</kind><date>20210105</date></document-id>"
           b"</publication-reference><invention-title>Cup&rsquo;s lid</invention-title>"
           b"</us-bibliographic-data-grant></us-patent-grant>")
    g = parse_grant(xml)
    assert g.patent_id == "USD0900001" and g.title == "Cup\u2019s lid" and g.figures == []


# ------------------------------------------------------------------------------------------------------------------
# Bi-level sheets
# ------------------------------------------------------------------------------------------------------------------


def _g4(ink: np.ndarray, photometric: int) -> bytes:
    """A CCITT G4 TIFF of an ink mask with PhotometricInterpretation 0 (WhiteIsZero, the USPTO's) or 1
    (BlackIsZero): PIL stores the bits to match the tag."""
    buf = io.BytesIO()
    Image.fromarray(~ink).convert("1").save(buf, format="TIFF", compression="group4", tiffinfo={262: photometric})
    return buf.getvalue()


def test_bilevel_polarity_both_photometric_conventions():
    ink = np.zeros((60, 80), dtype=bool)
    ink[10:12, 5:75] = True  # a 2-pixel line
    for photometric in (0, 1):
        data = _g4(ink, photometric)
        with Image.open(io.BytesIO(data)) as im:
            assert im.tag_v2[262] == photometric and im.info["compression"] == "group4"
        got, inverted, dpi = read_ink(data)
        assert not inverted and np.array_equal(got, ink), photometric
    # a file whose photometric tag says the opposite of its bits decodes mostly black: inverted back, said so
    data = bytearray(_g4(ink, 1))
    entry = data.find(bytes([0x06, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00]))  # tag 262 = 1
    assert entry > 0
    data[entry + 8] = 0
    with Image.open(io.BytesIO(bytes(data))) as im:
        assert im.tag_v2[262] == 0 and np.asarray(im).mean() < 0.5  # decoded mostly black
    got, inverted, _ = read_ink(bytes(data))
    assert inverted and np.array_equal(got, ink)


def test_real_sheet_is_white_paper_with_black_lines(impact_sample):
    data = (impact_sample / SPOON / f"{SPOON}-D00002.TIF").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1" and im.tag_v2[262] == 0 and im.info["compression"] == "group4"  # WhiteIsZero
    ink, inverted, dpi = read_ink(data)
    assert not inverted and dpi == (300.0, 300.0) and 0.005 < ink.mean() < 0.2


def test_thin_lines_survive_the_shrink():
    ink = np.zeros((2000, 2000), dtype=bool)
    ink[:, 1000] = True  # one pixel wide at 300 dpi
    ink[500:1500, 200:600] = True  # a solid block
    grey = np.asarray(ink_to_grey(ink, 500))  # 4x smaller
    assert grey.shape == (500, 500)
    line = grey[100:400, 250].min()  # the darkest pixel across the line, along its length
    plain = np.asarray(Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).resize((500, 500), Image.LANCZOS))
    assert line <= 128 < plain[100:400, 249:252].min()  # plain shrinking leaves a faint trace, ours half black
    assert grey[200, 100] == 0 and grey[10, 10] == 255  # solid stays black, paper white


# ------------------------------------------------------------------------------------------------------------------
# Labels and segmentation
# ------------------------------------------------------------------------------------------------------------------


def test_parse_label():
    cases = {"FIG. 3": "3", "FIG.12A": "12A", "Fig 7": "7", "FIGURE 2": "2", "FIG-5": "5", "F1G. 4": "4",
             "FIG. 1O": "10", "1.3": "1.3", "0.90": None, "1.0": None, "1.03": None, "FIGS": None, "12": None, "FIG.": None}
    for text, want in cases.items():
        assert parse_label(text) == want, text


def test_tesseract_is_installed():
    assert tesseract_available(), "tests need Debian's tesseract-ocr: sh tests/install_tesseract.sh (make test does)"


def _sheet(views, size=(1600, 1200)):
    """A bi-level sheet with a box drawing per view ``(x, y, w, h, label or None, rotate)``."""
    im = Image.new("L", size, 255)
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=48)
    for x, y, w, h, label, rotate in views:
        d.rectangle([x, y, x + w, y + h], outline=0, width=4)
        d.line([x, y, x + w, y + h], fill=0, width=3)
        for k in range(8):  # dashes along the bottom edge: a broken line
            d.line([x + 10 + 30 * k, y + h - 20, x + 25 + 30 * k, y + h - 20], fill=0, width=3)
        if label:
            t = Image.new("L", (260, 70), 255)
            ImageDraw.Draw(t).text((5, 5), label, fill=0, font=font)
            if rotate:
                t = t.rotate(90, expand=True)
                im.paste(t, (x + w + 30, y + h // 2 - 130))
            else:
                im.paste(t, (x + w // 2 - 100, y + h + 40))
    return np.asarray(im) < 128


def test_segment_hand_made_sheet_with_labels_and_without_ocr():
    ink = _sheet([(100, 100, 500, 300, "FIG. 2", False), (900, 100, 300, 600, "FIG. 3", True),
                  (150, 650, 400, 300, "FIG. 4", False)])
    res = segment_sheet(ink, 1)
    figs = sorted(res.figures, key=lambda f: f.label)
    assert [f.label for f in figs] == ["2", "3", "4"] and res.labels_read.count("3") == 1
    assert all(f.method == "label" for f in figs)
    box2, box3, box4 = (f.crop for f in figs)
    assert box2[1] < 110 and box2[3] > 590 and box2[2] < 420  # the view, not its label below it
    assert box3[1] < 910 and box3[3] < 1220 and box4[0] > 620  # FIG. 3's label, turned, is not in its box
    assert all(f.erase == [] or all(e not in f.keep for e in f.erase) for f in figs)
    plain = segment_sheet(ink, 1, ocr=False)  # no OCR: the views in reading order, labels not read
    assert [f.method for f in plain.figures] == ["reading_order"] * 3
    assert [f.crop[0] < 500 for f in plain.figures] == [True, True, False]


def test_segment_real_sheet_two_figures(impact_sample):
    ink, _, dpi = read_ink((impact_sample / SPOON / f"{SPOON}-D00002.TIF").read_bytes())
    res = segment_sheet(ink, 2, dpi[0])
    assert [f.label for f in res.figures] == ["2", "3"]
    left, right = res.figures
    assert left.crop[3] <= right.crop[1] and left.crop[1] < ink.shape[1] // 2 < right.crop[1]
    label_y = left.label_box[0]
    assert left.crop[2] <= label_y + 5  # the label is below the view and not in its crop


def _fig(sheet, label, x=0):
    return Figure(sheet, (0, x, 100, x + 100), [(0, x, 100, x + 100)], [], label, None, label,
                  "label" if label else "reading_order")


def test_number_figures_repairs_out_of_order_and_fills_gaps():
    # "4" read for "1" on sheet 1 (USD0928145)
    sheets = [SheetResult(i + 1, (100, 300), [_fig(i + 1, lab)]) for i, lab in enumerate(["4", "2", "3", "4", "5"])]
    notes = number_figures(sheets)
    assert [s.figures[0].figure for s in sheets] == ["1", "2", "3", "4", "5"]
    assert notes == ["sheet 1: label read as FIG. 4 is out of order or read twice; taken as FIG. 1"]
    # nothing read on sheet 2, "3" read for "5" on sheet 5 (USD0919622)
    sheets = [SheetResult(i + 1, (100, 300), [_fig(i + 1, lab)]) for i, lab in
              enumerate(["1", None, "3", "4", "3", "6"])]
    number_figures(sheets)
    assert [s.figures[0].figure for s in sheets] == ["1", "2", "3", "4", "5", "6"]
    assert [s.figures[0].method for s in sheets] == ["label", "inferred", "label", "label", "label", "label"]
    # an unlabelled part on a sheet whose number is taken joins the nearest labelled view
    sheets = [SheetResult(1, (100, 400), [_fig(1, "1", 0), _fig(1, None, 150)]),
              SheetResult(2, (100, 300), [_fig(2, "2")])]
    number_figures(sheets)
    assert [f.figure for f in sheets[0].figures] == ["1"] and sheets[0].figures[0].keep[-1][1] == 150
    # Hague numbers, one unread
    sheets = [SheetResult(i + 1, (100, 300), [_fig(i + 1, lab)]) for i, lab in enumerate(["1.1", None, "1.3"])]
    number_figures(sheets)
    assert [s.figures[0].figure for s in sheets] == ["1.1", "1.2", "1.3"]
    # no label anywhere: reading order
    sheets = [SheetResult(1, (100, 300), [_fig(1, None, 0), _fig(1, None, 150)])]
    number_figures(sheets)
    assert [f.figure for f in sheets[0].figures] == ["1", "2"]


# ------------------------------------------------------------------------------------------------------------------
# Archives
# ------------------------------------------------------------------------------------------------------------------


def _patent_zip(folder: Path, nested: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"{folder.name}/{f.name}" if nested else f.name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def weekly_tar(impact_sample, tmp_path_factory):
    """A weekly bulk archive laid out like the USPTO's: per-patent zips under DESIGN/, a utility grant's zip
    under UTIL0907/ (never opened), plus one patent unpacked as a folder."""
    root = tmp_path_factory.mktemp("bulk")
    path = root / "I20210105.tar"
    with tarfile.open(path, "w") as t:
        for pid in (RAZOR, SPOON):
            data = _patent_zip(impact_sample / pid)
            ti = tarfile.TarInfo(f"I20210105/DESIGN/{pid}.ZIP")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        junk = b"not a zip at all"
        ti = tarfile.TarInfo("I20210105/UTIL0907/US10884234-20210105.ZIP")
        ti.size = len(junk)
        t.addfile(ti, io.BytesIO(junk))
        pid = "USD0913312-20210316"
        for f in sorted((impact_sample / pid).iterdir()):
            t.add(f, f"I20210105/LOOSE/{pid}/{f.name}")
    return path


def test_walk_weekly_tar_and_read_members(weekly_tar, impact_sample):
    found, stats = walk_inputs([str(weekly_tar)], weekly_tar.parent)
    assert [Path(g.xml.describe().split("!")[-1]).name for g in found] == [
        f"{RAZOR}.XML", f"{SPOON}.XML", "USD0913312-20210316.XML"]
    assert dict(stats.skipped_by_kind) == {"utility": 1} and not stats.problems
    razor = found[0]
    sheet = razor.sheet(f"{RAZOR}-D00003.TIF")
    assert sheet.path == "I20210105.tar" and [s[0] for s in sheet.steps] == ["tar", "zip"]
    assert read_member(weekly_tar.parent, sheet) == (impact_sample / RAZOR / f"{RAZOR}-D00003.TIF").read_bytes()
    loose = found[2].sheet("USD0913312-20210316-D00001.TIF")
    assert read_member(weekly_tar.parent, loose) == \
        (impact_sample / "USD0913312-20210316" / "USD0913312-20210316-D00001.TIF").read_bytes()
    assert Member.from_list(json.loads(json.dumps(sheet.to_list()))) == sheet  # travels to the workers as JSON
    assert kind_from_name("USPP0032000-20210105.ZIP") == "plant" and kind_from_name("USD0900000.XML") == "design"


def test_zip_of_zips_and_compressed_tar(impact_sample, tmp_path):
    outer = tmp_path / "week.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr(f"DESIGN/{SPOON}.ZIP", _patent_zip(impact_sample / SPOON, nested=False))
    found, _ = walk_inputs([str(outer)], tmp_path)
    assert len(found) == 1
    m = found[0].sheet(f"{SPOON}-D00001.TIF")
    assert [s[0] for s in m.steps] == ["zip", "zip"]
    assert read_member(tmp_path, m) == (impact_sample / SPOON / f"{SPOON}-D00001.TIF").read_bytes()
    gz = tmp_path / "week.tar.gz"
    with tarfile.open(gz, "w:gz") as t:
        t.add(impact_sample / SPOON / f"{SPOON}.XML", "x.XML")
    with pytest.raises(ValueError, match="compressed tar.*unpack"):
        walk_inputs([str(gz)], tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# The importer
# ------------------------------------------------------------------------------------------------------------------


def _opts(tmp_path, **kw):
    return ImportOptions(segment_cache=str(tmp_path / "seg-cache"), **kw)


def test_import_folders_records_fields_and_cache(impact_sample, tmp_path, monkeypatch):
    src = tmp_path / "grants"
    for pid in (RAZOR, SPOON):
        shutil.copytree(impact_sample / pid, src / pid)
    records, problems, stats = import_records("uspto", [str(src)], _opts(tmp_path))
    assert [r.patent_id for r in records] == ["USD0907292", "USD0909824"]
    razor, spoon = records
    assert (razor.grant_date, razor.class_code, razor.title) == ("2021-01-05", "28-03", "Shaving blade cartridge")
    assert razor.class_name == "pharmaceutical and cosmetic products, toilet articles and apparatus (28-03)"
    assert razor.extra["application_date"] == "2019-02-20" and razor.extra["us_classes"] == ["D28/47"]
    assert [c["number"] for c in razor.extra["citations_examiner"]][:2] == ["D633254", "D744165"]
    assert razor.extra["claim"].startswith("The ornamental design for a shaving blade cartridge")
    assert len(spoon.drawings) == 7 and [d.extra["figure"] for d in spoon.drawings] == list("1234567")
    d2 = spoon.drawings[1]
    assert (d2.view, d2.extra["sheet"], d2.extra["segmentation"]) == ("top", 2, "label")
    assert d2.extra["caption"] == "FIG. 2 is a top view thereof." and d2.extra["object"] == "soccer sport spoon"
    assert d2.path == f"{SPOON}/{SPOON}-D00002.TIF"
    seg = stats["segmentation"]
    assert (seg["patents_measured"], seg["exact_count"], seg["accuracy"]) == (2, 2, 1.0) and seg["misses"] == []
    assert stats["report_lines"][0].startswith("segmentation: 2 of 2 patents (100.0 %)")
    assert not [p for p in problems if p.scope in ("record", "drawing")]
    # the figure as the shard builder gets it: grey at the training size, white paper, the label erased
    im = spoon.image_source(d2, uspto_importer.ImageOptions(max_side=256))
    a = np.asarray(im)
    assert im.mode == "L" and max(im.size) == 256 and im.info["orig_size"][1] > 1000
    assert np.median(a) == 255 and a.min() == 0
    # a rerun reads the cache: no segmentation at all
    assert len(list((tmp_path / "seg-cache").glob("*.json"))) == 2

    def boom(*a, **k):
        raise AssertionError("segmented again")

    monkeypatch.setattr(uspto_importer, "_segment_task", boom)
    again, _, stats2 = import_records("uspto", [str(src)], _opts(tmp_path))
    assert [d.extra["_crop"] for d in again[1].drawings] == [d.extra["_crop"] for d in spoon.drawings]
    assert stats2["segmentation"]["exact_count"] == 2


def test_import_bad_inputs_are_reported_and_the_rest_kept(impact_sample, tmp_path):
    src = tmp_path / "grants"
    shutil.copytree(impact_sample / SPOON, src / SPOON)
    # a sheet missing, a sheet corrupt
    shutil.copytree(impact_sample / RAZOR, src / RAZOR)
    (src / RAZOR / f"{RAZOR}-D00008.TIF").unlink()
    (src / RAZOR / f"{RAZOR}-D00003.TIF").write_bytes(b"II*\x00garbage")
    # a grant that is not XML, and a utility grant's XML (kind B2)
    bad = src / "USD0999999-20210105"
    bad.mkdir()
    (bad / "USD0999999-20210105.XML").write_bytes(b"<us-patent-grant><oops>")
    util = src / "X1"
    util.mkdir()
    xml = grant_xml(impact_sample, SPOON).replace(b"<kind>S1</kind>", b"<kind>B2</kind>", 1)
    (util / "X1.XML").write_bytes(xml)
    records, problems, stats = import_records("uspto", [str(src)], _opts(tmp_path))
    assert [r.patent_id for r in records] == ["USD0907292", "USD0909824"]
    by_kind = {p.kind: p for p in problems}
    assert "USD0999999-20210105/USD0999999-20210105.XML" in by_kind["invalid_xml"].reason
    assert by_kind["missing_file"].scope == "drawing" and "D00008.TIF" in by_kind["missing_file"].reason
    assert by_kind["unreadable_image"].scope == "drawing" and "sheet 3" in by_kind["unreadable_image"].reason
    assert stats["skipped_by_kind"] == {"kind B2": 1}
    razor = records[0]
    assert {d.extra["sheet"] for d in razor.drawings} == {1, 2, 4, 5, 6, 7}
    assert stats["segmentation"]["misses"][0]["patent_id"] == "USD0907292"  # 6 of 8 figures: a miss, printed
    assert any(line.startswith("  USD0907292: 6 figures cut, the XML says 8") for line in stats["report_lines"])


def test_build_from_weekly_tar_sheets_and_both(weekly_tar, tmp_path):
    out = tmp_path / "shards"
    rep = build_shards(str(weekly_tar), out, input_format="uspto", splits=(("train", 1.0),), samples_per_shard=50,
                       import_options=_opts(tmp_path, uspto_images="both"), progress=False, max_side=128,
                       contact_sheet=12)
    got = members(out / "train" / "train-000000.tar")
    metas = [json.loads(v) for k, v in got.items() if k.endswith(".json")]
    kinds = {(m["patent_id"], m["drawing_type"]) for m in metas}
    assert {("USD0907292", "figure"), ("USD0907292", "sheet"), ("USD0913312", "sheet")} <= kinds
    sheets = [m for m in metas if m["drawing_type"] == "sheet"]
    assert len(sheets) == 8 + 3 + 2 and all(m["view"] == "sheet" for m in sheets)
    assert rep["input"]["skipped_by_kind"] == {"utility": 1} and rep["input"]["images"] == "both"
    assert rep["input"]["segmentation"]["accuracy"] == 1.0
    assert "not design grants, skipped: utility 1" in (out / "build_report.txt").read_text()
    assert (out / "build_report_contact_sheet.png").is_file() and rep["contact_sheet"].endswith("contact_sheet.png")


def test_per_patent_captions_from_the_sample_csv(impact_sample, tmp_path):
    """The DesignCLIP sample CSV's LLaVA captions (one per patent) joined with --captions: a key that is the
    patent's number gives its caption to every drawing of the patent."""
    import csv

    rows = {r["id"]: r["caption"].strip() for r in csv.DictReader(open(impact_sample / "sample_data.csv"))}
    cap = tmp_path / "captions.jsonl"
    cap.write_text("".join(json.dumps({"key": k, "captions": [v]}) + "\n" for k, v in rows.items()))
    src = tmp_path / "grants"
    shutil.copytree(impact_sample / SPOON, src / SPOON)
    out = tmp_path / "shards"
    rep = build_shards(str(src), out, input_format="uspto", splits=(("train", 1.0),), captions=str(cap),
                       captions_join="append", import_options=_opts(tmp_path), progress=False, max_side=96)
    assert rep["captions"]["drawings_matched"] == 7
    metas = [json.loads(v) for k, v in members(out / "train" / "train-000000.tar").items() if k.endswith(".json")]
    assert len(metas) == 7 and all(m["captions"][-1] == rows["D0909824"] for m in metas)
    assert metas[0]["captions"][0].startswith("A perspective view of a soccer sport spoon")


def test_captioner_sees_the_figure_not_the_sheet(impact_sample, tmp_path):
    """patentclip-caption (shards/captioning) decodes what the shard builder does: the figure cut from its sheet."""
    from patentclip.shards.captioning.pipeline import load_image
    from patentclip.shards.captioning.prompts import drawing_tasks

    src = tmp_path / "grants"
    shutil.copytree(impact_sample / SPOON, src / SPOON)
    records, _, _ = import_records("uspto", [str(src)], _opts(tmp_path))
    tasks = drawing_tasks(records)
    assert [t.key for t in tasks][:2] == ["USD0909824_00", "USD0909824_01"]
    fig2, fig3 = load_image(tasks[1], 768), load_image(tasks[2], 768)  # FIG. 2 and 3 share sheet 2
    sheet = Image.open(src / SPOON / f"{SPOON}-D00002.TIF")
    assert fig2.mode == "RGB" and fig2.size != fig3.size
    assert fig2.size[0] / fig2.size[1] < 0.7 < sheet.size[0] / sheet.size[1]  # one tall view, not the sheet


# the scipy names the segmentation uses (its upstream surface): a test fails when one moves
SCIPY_SURFACE = {"scipy.ndimage": ("label", "find_objects", "maximum_filter1d"), "scipy.sparse": ("coo_matrix",),
                 "scipy.sparse.csgraph": ("connected_components",), "scipy.optimize": ("linear_sum_assignment",)}


def test_scipy_surface():
    import importlib

    for module, names in SCIPY_SURFACE.items():
        m = importlib.import_module(module)
        for n in names:
            assert callable(getattr(m, n, None)), f"{module}.{n}"
