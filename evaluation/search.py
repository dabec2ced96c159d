"""``patentclip-search``: prior-art search in an index built by ``patentclip-index``.

    patentclip-search --index prior-art --image front.png --image side.png --before 2021-03-02
    patentclip-search --index prior-art --text "a chair with curved armrests" --class 06-01 --json
    patentclip-search --index prior-art --patent USD0912345          # its drawings, among earlier patents
    patentclip-search serve --index prior-art                        # the search page on http://127.0.0.1:8765

A query is one or several drawings of one design (``--image``, repeatable: a drawing's score is its best score
over the query's views, or ``--combine mean`` averages the views into one query), a text through the text tower
(``--text``), or a patent or drawing already in the index (``--patent``, ``--key``: its drawings are the query,
its grant date the prior-art date unless ``--before`` says otherwise, and its own patent is excluded). Query
drawings are normalised as ``patentclip-shards build`` normalises drawings (grey, white background, longest side as
the indexed drawings are stored, or ``--max-side``) and embedded with the index's own model by the evaluation preprocessing, so a drawing that is in
the index finds itself.

Filters: ``--before DATE`` (only patents granted strictly before: the prior-art filter), ``--after DATE``,
``--class`` (Locarno code, class name or id; repeatable), ``--view`` (repeatable). Results are grouped by patent
(its best drawing, ``--drawings`` lists all of them with their scores) or, with ``--no-group``, single drawings.
``--json`` prints one JSON object for scripts. Ranking rules and exactness: docs/search.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from patentclip.evaluation import index as X
from patentclip.evaluation.index_build import load_model
from patentclip.launch.safe_load import TRUST_FLAG, TRUST_HELP
from patentclip.plugins.data import batch as B
from patentclip.plugins.data.batch import collate_patent_batch
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
from patentclip.plugins.image_transport import ImageTransport
from patentclip.shards.images import DEFAULT_MAX_SIDE, ImageError, decode_drawing


class QueryError(ValueError):
    """A query that cannot be run (bad image, unknown patent, contradictory options): the message says why."""


class Searcher:
    """An index with its model loaded: embeds queries and searches (the CLI and the web page use this)."""

    def __init__(self, index: X.PriorArtIndex, loaded, device, max_side: Optional[int] = None):
        self.index = index
        self.loaded = loaded
        self.device = torch.device(device)
        self.max_side = max_side or index.stored_max_side or DEFAULT_MAX_SIDE
        self.transport = ImageTransport.choose("uint8", loaded.preprocess)  # as patentclip-index embedded drawings
        self.preprocess = GreyAwarePreprocess(loaded.preprocess, self.transport)

    @classmethod
    def open(cls, folder: str, checkpoint: Optional[str] = None, device: Optional[str] = None,
             max_side: Optional[int] = None, workdir: Optional[str] = None, trust: bool = False) -> "Searcher":
        """Open ``folder`` and load the model it was built with (``checkpoint``: where that model is now; its
        weights must have the index's fingerprint; read weights-only unless ``trust``, ``--trust-checkpoint``)."""
        index = X.PriorArtIndex.open(folder)
        m = index.manifest["model"]
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ckpt = checkpoint or m["checkpoint"]
        with tempfile.TemporaryDirectory(prefix="patentclip-search-") as work:
            loaded = load_model(ckpt, m.get("model_arg"), m.get("pretrained"), dev, int(m.get("seed", 0)),
                                workdir or work, trust)
        fp = X.model_fingerprint(loaded.model)
        if fp != m["fingerprint"]:
            raise ValueError(f"the model at {ckpt} is not the one {folder} was built with (fingerprint {fp[:12]}, "
                             f"the index's {m['fingerprint'][:12]}); pass --checkpoint with the index's model")
        if index.manifest.get("pending_shards"):
            logging.warning("%s: %d shards are not indexed yet (pending_shards in index.json)", folder,
                            len(index.manifest["pending_shards"]))
        return cls(index, loaded, dev, max_side)

    # -- embedding ------------------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str = "image") -> Image.Image:
        """A query drawing as the shard builder stores drawings (grey, white background, longest side limited to
        the indexed drawings' stored size)."""
        try:
            img, _ = decode_drawing(bytes(data), "L", self.max_side)
        except ImageError as exc:
            raise QueryError(f"{name}: {exc}") from None
        return img

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(views, dim) L2-normalised image embeddings, as the index's drawings were embedded."""
        batch = collate_patent_batch([{B.IMAGE: self.preprocess(im)} for im in images])
        model = self.loaded.model.eval()
        x = self.transport.images(batch, B.IMAGE, self.device, torch.float32)
        return F.normalize(model.encode_image(x, normalize=True).float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise QueryError("the text query is empty")
        tokens = self.loaded.tokenizer([text.strip()]).to(self.device)
        return F.normalize(self.loaded.model.eval().encode_text(tokens, normalize=True).float(), dim=-1).cpu().numpy()

    # -- queries --------------------------------------------------------------------------------------------
    def filters(self, before: Optional[str] = None, after: Optional[str] = None,
                classes: Optional[Sequence[str]] = None, views: Optional[Sequence[str]] = None,
                exclude_patents: Sequence[str] = ()) -> X.Filters:
        """Filters from user values (dates as YYYY-MM-DD; classes as code, name or id)."""
        try:
            return X.Filters(
                before=X.date_to_day(before, "--before") if before else None,
                after=X.date_to_day(after, "--after") if after else None,
                classes=[self.index.class_id_of(c) for c in classes] if classes else None,
                views=list(views) if views else None, exclude_patents=tuple(exclude_patents))
        except ValueError as exc:
            raise QueryError(str(exc)) from None

    def query(self, *, images: Sequence[bytes] = (), image_names: Sequence[str] = (), text: Optional[str] = None,
              patent: Optional[str] = None, key: Optional[str] = None, before: Optional[str] = None,
              after: Optional[str] = None, classes: Optional[Sequence[str]] = None,
              views: Optional[Sequence[str]] = None, prior_art: bool = True, top: int = 10, combine: str = "max",
              group: bool = True, with_drawings: bool = False, exact: bool = False) -> Dict:
        """Run one query; returns the JSON document ``patentclip-search --json`` prints."""
        kinds = [n for n, v in (("image", images), ("text", text), ("patent", patent), ("key", key)) if v]
        if len(kinds) != 1:
            raise QueryError("give exactly one query: drawings (--image), a text (--text), an indexed patent "
                             f"(--patent) or an indexed drawing (--key); got {kinds or 'none'}")
        t0 = time.perf_counter()
        exclude: List[str] = []
        query_doc: Dict = {"combine": combine}
        if images:
            names = list(image_names) or [f"image {i + 1}" for i in range(len(images))]
            q = self.embed_images([self.decode(b, n) for b, n in zip(images, names)])
            query_doc["images"] = names
        elif text:
            q = self.embed_text(text)
            query_doc["text"] = text
        else:
            rows = self.index.rows_of_patent(patent) if patent else np.asarray(
                [r] if (r := self.index.row_of_key(key)) is not None else [], dtype=np.int64)
            if not len(rows):
                what = f"patent {patent!r}" if patent else f"drawing {key!r}"
                raise QueryError(f"{what} is not in the index ({self.index.rows} drawings of "
                                 f"{len(self.index.patents)} patents)")
            q = self.index.vectors(rows)
            pid = self.index.patent_id[rows[0]]
            day = int(self.index.grant_day[rows[0]])
            exclude.append(pid)
            if before is None and prior_art:
                if day < 0:
                    raise QueryError(f"patent {pid} has no grant date in the index: give --before or --no-prior-art")
                before = X.day_to_date(day)
            query_doc.update({"patent": pid, "drawings": [self.index.drawing(r) for r in rows]})
        filters = self.filters(before, after, classes, views, exclude)
        res = self.index.search(q, top=top, filters=filters, combine=combine, group=group,
                                with_drawings=with_drawings, exact=exact)
        return {"query": query_doc, "filters": filters.to_json(),
                "index": {"path": self.index.folder, "drawings": self.index.rows, "patents": len(self.index.patents),
                          "model": self.index.manifest["model"]["name"], "faiss": self.index.spec.describe()},
                "results": res["results"], "searched": {**res["searched"],
                                                        "seconds": round(time.perf_counter() - t0, 4)}}


def format_results(doc: Dict) -> str:
    """A plain-text table of a query's results."""
    res = doc["results"]
    s = doc["searched"]
    head = (f"{len(res)} results of {s['allowed']} drawings allowed by the filters ({s['drawings']} indexed), "
            f"{'exact' if s['exact'] else 'approximate'}, {s['seconds']:.3f} s")
    if not res:
        return head
    grouped = "patent_id" in res[0] and "best" in res[0]
    lines = [head, f"{'rank':>4}  {'score':>7}  {'patent':<12} {'granted':<10}  {'class':<32}  {'view':<12}  title"]
    for r in res:
        d = r["best"] if grouped else r
        cls = f"{r['class']['code']} {r['class']['name']}"[:32]
        lines.append(f"{r['rank']:>4}  {r['score']:>7.4f}  {r['patent_id']:<12} {r['grant_date'] or '?':<10}  "
                     f"{cls:<32}  {d['view']:<12}  {r.get('title') or ''}")
        for dr in r.get("drawings", []):
            mark = "" if dr.get("allowed", True) else "  (excluded by the filters)"
            lines.append(f"{'':>4}  {dr['score']:>7.4f}    {dr['key']:<28} {dr['view']}{mark}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-search", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n", 1)[1])
    p.add_argument("--index", required=True, help="The index folder (patentclip-index build --out).")
    g = p.add_argument_group("query (exactly one)")
    g.add_argument("--image", action="append", default=[], help="A query drawing (repeat for several views).")
    g.add_argument("--text", default=None, help="A description, embedded by the text tower.")
    g.add_argument("--patent", default=None, help="An indexed patent: its drawings are the query.")
    g.add_argument("--key", default=None, help="An indexed drawing (its key) as the query.")
    g.add_argument("--combine", choices=["max", "mean"], default="max",
                   help="Several views: a drawing's best score over them (max), or their mean embedding.")
    g = p.add_argument_group("filters")
    g.add_argument("--before", default=None, help="Only patents granted strictly before this date (YYYY-MM-DD).")
    g.add_argument("--after", default=None, help="Only patents granted on or after this date.")
    g.add_argument("--no-prior-art", action="store_true",
                   help="With --patent/--key: do not restrict to patents granted before it.")
    g.add_argument("--class", dest="classes", action="append", default=None,
                   help="Locarno class code, name or id (repeatable).")
    g.add_argument("--view", dest="views", action="append", default=None, help="View name (repeatable).")
    g = p.add_argument_group("output")
    g.add_argument("--top", type=int, default=10, help="Results (patents, or drawings with --no-group).")
    g.add_argument("--no-group", action="store_true", help="Single drawings instead of patents.")
    g.add_argument("--drawings", action="store_true", help="List every drawing of each result patent.")
    g.add_argument("--exact", action="store_true", help="Score every allowed drawing (approximate indexes).")
    g.add_argument("--json", action="store_true", help="Print one JSON object.")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None, help="Where the index's model is now, when it moved.")
    g.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    g.add_argument("--device", default=None, help="Default: cuda when there is a GPU, else cpu.")
    g.add_argument("--max-side", type=int, default=None,
                   help="Longest side query drawings are shrunk to, as the shard builder's --max-side (default: the "
                        "indexed drawings' stored size, else the builder's default).")
    return p


def serve_parser() -> argparse.ArgumentParser:
    from patentclip.evaluation import serve as S

    p = argparse.ArgumentParser(prog="patentclip-search serve", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter, description=S.__doc__)
    p.add_argument("--index", required=True, help="The index folder.")
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on. Default: %(default)s (this machine only). The page has no "
                        "authentication: see docs/search.md before listening on another address.")
    p.add_argument("--port", type=int, default=8765, help="Port (0: any free port). Default: %(default)s.")
    p.add_argument("--checkpoint", default=None, help="Where the index's model is now, when it moved.")
    p.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    p.add_argument("--device", default=None)
    p.add_argument("--max-side", type=int, default=None, help="As for a query (default: the indexed drawings').")
    p.add_argument("--max-upload-mb", type=int, default=20, help="Largest request body. Default: %(default)s.")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    if argv[:1] == ["serve"]:
        from patentclip.evaluation import serve as S

        args = serve_parser().parse_args(argv[1:])
        try:
            searcher = Searcher.open(args.index, args.checkpoint, args.device, args.max_side,
                                 trust=args.trust_checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            print(f"patentclip-search serve: {exc}", file=sys.stderr)
            return 2
        return S.serve(searcher, args.host, args.port, max_body=args.max_upload_mb << 20)
    args = build_parser().parse_args(argv)
    try:
        images = []
        for path in args.image:
            try:
                with open(path, "rb") as f:
                    images.append(f.read())
            except OSError as exc:
                raise QueryError(f"--image {path}: {exc.strerror or exc}") from None
        searcher = Searcher.open(args.index, args.checkpoint, args.device, args.max_side,
                                 trust=args.trust_checkpoint)
        doc = searcher.query(images=images, image_names=args.image, text=args.text, patent=args.patent, key=args.key,
                             before=args.before, after=args.after, classes=args.classes, views=args.views,
                             prior_art=not args.no_prior_art, top=args.top, combine=args.combine,
                             group=not args.no_group, with_drawings=args.drawings, exact=args.exact)
    except (FileNotFoundError, ValueError) as exc:
        print(f"patentclip-search: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=1, ensure_ascii=False) if args.json else format_results(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
