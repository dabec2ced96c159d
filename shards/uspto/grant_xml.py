"""USPTO grant XML (``us-patent-grant``, DTD v4.0-v4.7) to a :class:`Grant`: bibliographic data, classes,
examiners' citations, drawing sheets, figure descriptions and the claim.

Fields taken (docs/importers.md, "USPTO design grants"):

* ``publication-reference``: patent number (``D0907292`` -> patent id ``USD0907292``), kind (``S1`` = design
  grant; anything else is not imported), grant date.
* ``application-reference``: application number and filing date.
* ``classification-locarno``: edition and main classification (``0703`` -> ``07-03``).
* ``classification-national``: the US classes (``D28 47`` -> ``D28/47``, main then further), kept apart from
  the Locarno class.
* ``invention-title``, the claim text, ``number-of-figures``, ``number-of-drawing-sheets``.
* ``us-references-cited`` (``references-cited`` before 2012): every patent citation with its category; those
  "cited by examiner" are the examiner's prior art (number in canonical spelling, country, kind, date).
* ``drawings``: the image files; ``D00000`` is the front-page drawing (a copy of one figure), the sheets are
  ``D00001`` on.
* ``description-of-drawings``: each paragraph that starts with a figure number becomes a
  :class:`~.descriptions.FigureDescription` (:mod:`.descriptions`).

Malformed XML raises :class:`GrantXMLError` with the parser's line and column. Named HTML entities that the
DTD would define (``&lsquo;``) are resolved without the DTD.
"""
from __future__ import annotations

import html.entities
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..importers.common import canonical_patent_key, normalize_locarno
from .descriptions import FigureDescription, claim_object, parse_descriptions

__all__ = ["Citation", "Grant", "GrantXMLError", "parse_grant"]


class GrantXMLError(ValueError):
    """The XML could not be read as a grant."""


@dataclass(frozen=True)
class Citation:
    """A patent cited in the grant."""

    number: str  # canonical spelling: D633254, 4621424, 2011/0232101 (as written for publications)
    country: str
    kind: Optional[str]
    date: Optional[str]  # YYYY-MM or YYYY-MM-DD (the USPTO gives the month: day 00)
    name: Optional[str]
    category: str  # "cited by examiner", "cited by applicant", "cited by other", ...

    @property
    def by_examiner(self) -> bool:
        return "examiner" in self.category

    def to_dict(self) -> Dict:
        d = {"number": self.number, "country": self.country, "kind": self.kind, "date": self.date}
        return {k: v for k, v in d.items() if v}


@dataclass
class Grant:
    """A parsed grant (module docstring)."""

    patent_id: str
    doc_number: str
    kind: str
    grant_date: Optional[str]
    application_number: Optional[str]
    application_date: Optional[str]
    title: Optional[str]
    locarno: Optional[str]
    locarno_edition: Optional[str]
    locarno_raw: Optional[str]
    us_classes: List[str]
    citations: List[Citation]
    number_of_figures: Optional[int]
    number_of_sheets: Optional[int]
    image_files: List[str]  # every img/@file, in document order (D00000 first)
    figures: List[FigureDescription]
    claim: Optional[str]
    object: Optional[str]  # the claimed article, from the claim
    notes: List[str] = field(default_factory=list)  # oddities met while parsing

    @property
    def is_design(self) -> bool:
        return self.kind.upper().startswith("S")

    @property
    def examiner_citations(self) -> List[Citation]:
        return [c for c in self.citations if c.by_examiner]

    @property
    def sheet_files(self) -> List[str]:
        """The drawing sheets (``D00001`` on), without the front-page drawing ``D00000``."""
        return [f for f in self.image_files if not re.search(r"D0+\.[A-Za-z]+$", f)]


def _text(el: Optional[ET.Element]) -> Optional[str]:
    if el is None:
        return None
    t = re.sub(r"\s+", " ", "".join(el.itertext())).strip()
    return t or None


def _date(s: Optional[str]) -> Optional[str]:
    """``20210105`` -> ``2021-01-05``; ``19861100`` (month only) -> ``1986-11``; None if not a date."""
    if not s or not re.fullmatch(r"\d{8}", s.strip()):
        return None
    s = s.strip()
    y, m, d = s[:4], s[4:6], s[6:]
    if not 1 <= int(m) <= 12:
        return y if m == "00" else None
    return f"{y}-{m}" if d == "00" else f"{y}-{m}-{d}"


def us_class(s: str) -> Optional[str]:
    """A US class as printed (``D28 47``, ``D 2728``, `` 30 50``, ``D14486``) -> ``D28/47``, ``D2/728``, ``30/50``,
    ``D14/486``. The 6 characters are class (3, right-aligned) and subclass (3); longer values keep the rest."""
    if not s or not s.strip():
        return None
    raw = s.rstrip()
    raw = raw.rjust(6) if len(raw) < 6 else raw
    cls, sub = re.sub(r"\s+", "", raw[:3]), raw[3:].strip()
    if not cls:
        return None
    if not sub:
        return cls
    sub = re.sub(r"\s+", "", sub).lstrip("0") or "0"
    return f"{cls}/{sub}"


_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}


def _resolve_entities(text: str) -> str:
    def sub(m):
        name = m.group(1)
        if name in _XML_ENTITIES:
            return m.group(0)
        cp = html.entities.name2codepoint.get(name)
        return chr(cp) if cp else m.group(0)

    return _ENTITY.sub(sub, text)


def _doc_id(el: Optional[ET.Element]) -> Dict[str, Optional[str]]:
    if el is None:
        return {}
    d = el.find("document-id")
    d = el if d is None else d
    return {k: _text(d.find(k)) for k in ("country", "doc-number", "kind", "name", "date")}


def parse_grant(data: bytes, source: str = "") -> Grant:
    """Parse a grant XML document (module docstring). Raises :class:`GrantXMLError`."""
    where = f"{source}: " if source else ""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        if "undefined entity" not in str(exc):
            raise GrantXMLError(f"{where}not well-formed XML: {exc}") from None
        try:
            root = ET.fromstring(_resolve_entities(data.decode("utf-8", errors="replace")).encode("utf-8"))
        except ET.ParseError as exc2:
            raise GrantXMLError(f"{where}not well-formed XML: {exc2}") from None
    if root.tag != "us-patent-grant":
        raise GrantXMLError(f"{where}the root element is <{root.tag}>, not <us-patent-grant>")
    notes: List[str] = []
    bib = root.find("us-bibliographic-data-grant")
    if bib is None:
        raise GrantXMLError(f"{where}no <us-bibliographic-data-grant>")
    pub = _doc_id(bib.find("publication-reference"))
    doc = (pub.get("doc-number") or "").strip()
    if not doc:
        raise GrantXMLError(f"{where}no publication-reference doc-number")
    kind = (pub.get("kind") or "").strip()
    m = re.fullmatch(r"([A-Z]{0,2})0*(\d+)", doc.upper())
    patent_id = f"US{m.group(1)}{int(m.group(2)):07d}" if m else f"US{doc}"
    app = _doc_id(bib.find("application-reference"))
    loc = bib.find("classification-locarno")
    loc_raw = _text(loc.find("main-classification")) if loc is not None else None
    locarno = normalize_locarno(loc_raw) if loc_raw else None
    if loc_raw and locarno is None:
        notes.append(f"Locarno classification {loc_raw!r} is not a class code")
    edition = _text(loc.find("edition")) if loc is not None else None
    us_classes: List[str] = []
    nat = bib.find("classification-national")
    if nat is not None:
        for el in [nat.find("main-classification")] + nat.findall("further-classification"):
            c = us_class("".join(el.itertext())) if el is not None else None
            if c and c not in us_classes:
                us_classes.append(c)
    citations: List[Citation] = []
    refs = bib.find("us-references-cited")
    if refs is None:
        refs = bib.find("references-cited")
    if refs is not None:
        for cit in list(refs.findall("us-citation")) + list(refs.findall("citation")):
            pc = cit.find("patcit")
            if pc is None:
                continue  # non-patent literature (nplcit)
            d = _doc_id(pc)
            number = (d.get("doc-number") or "").strip()
            if not number:
                continue
            country = (d.get("country") or "").strip().upper()
            cat = (_text(cit.find("category")) or "").lower()
            canon = canonical_patent_key(number) if country == "US" and "/" not in number else number
            citations.append(Citation(canon, country, d.get("kind"), _date(d.get("date")), d.get("name"), cat))
    figs_el = bib.find("figures")
    n_figs = n_sheets = None
    if figs_el is not None:
        try:
            n_figs = int(_text(figs_el.find("number-of-figures")) or "")
        except ValueError:
            pass
        try:
            n_sheets = int(_text(figs_el.find("number-of-drawing-sheets")) or "")
        except ValueError:
            pass
    image_files = [img.get("file") for img in root.iter("img") if img.get("file")]
    dd = root.find(".//description-of-drawings")
    paragraphs = [_text(p) for p in dd.iter("p")] if dd is not None else []
    figures, desc_notes = parse_descriptions([p for p in paragraphs if p])
    notes.extend(desc_notes)
    claims = [_text(c) for c in root.iter("claim-text")]
    claim = " ".join(c for c in claims if c) or None
    title = _text(bib.find("invention-title"))
    return Grant(patent_id=patent_id, doc_number=doc, kind=kind, grant_date=_date(pub.get("date")),
                 application_number=app.get("doc-number"), application_date=_date(app.get("date")), title=title,
                 locarno=locarno, locarno_edition=edition, locarno_raw=loc_raw, us_classes=us_classes,
                 citations=citations, number_of_figures=n_figs, number_of_sheets=n_sheets, image_files=image_files,
                 figures=figures, claim=claim, object=claim_object(claim) if claim else None, notes=notes)
