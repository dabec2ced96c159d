"""The prior-art search page: ``patentclip-search serve --index DIR`` (a small HTTP server, standard library only).

Upload one or more drawings of a design or type a description, set the prior-art date and the class filter, and
see the closest earlier patents as a grid (drawing, patent number, grant date, class, score); open a result to see
all its views with their scores. The server listens on 127.0.0.1 by default.

**It has no authentication, no TLS and no rate limit**: anyone who can reach the port can search the index, read
every indexed drawing and use the machine's CPU/GPU. Keep it on loopback (reach it from elsewhere through an SSH
tunnel, ``ssh -L 8765:127.0.0.1:8765 host``) or put it behind a reverse proxy that authenticates, before you
give it another ``--host``.

Routes (JSON unless said otherwise)::

    GET  /                      the page (static/search.html, search.js, search.css: no external resources)
    GET  /api/info              the index: drawings, patents, date range, classes, views, model, faiss kind
    POST /api/search            {"images": [base64...], "names": [...], "text": str, "before": "YYYY-MM-DD",
                                 "after": ..., "classes": [code|id], "views": [...], "top": int, "combine": "max"}
                                -> patentclip-search --json's document; every drawing has "image": "/drawing/<row>"
    GET  /api/patent/<id>       all drawings of an indexed patent
    GET  /drawing/<row>         the drawing's image bytes, read from its shard (local or s3://) with one ranged
                                read of the tar member the index recorded
"""
from __future__ import annotations

import base64
import binascii
import functools
import http.server
import json
import logging
import re
import threading
import time
import urllib.parse
from importlib import resources
from typing import Dict, Tuple

import fsspec

from patentclip.evaluation import index as X

STATIC = {"search.html": "text/html; charset=utf-8", "search.js": "text/javascript; charset=utf-8",
          "search.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def static_file(name: str) -> bytes:
    return resources.files("patentclip.evaluation").joinpath("static", name).read_bytes()


class DrawingReader:
    """Image bytes of indexed drawings: one ranged read per drawing from its shard (any fsspec URL), retried,
    with a small cache."""

    def __init__(self, index: X.PriorArtIndex, retries: int = 3):
        self.index = index
        self.retries = retries
        self.read = functools.lru_cache(maxsize=2048)(self._read)

    def _read(self, row: int) -> Tuple[bytes, str]:
        ix = self.index
        if not 0 <= row < ix.rows:
            raise KeyError(row)
        offset, size = int(ix.offset[row]), int(ix.size[row])
        if offset < 0:
            raise LookupError(f"drawing {ix.key[row]} lies in a compressed shard; only uncompressed .tar shards "
                              f"can be read in place")
        fs, path = fsspec.core.url_to_fs(ix.shard[row])  # fsspec caches the filesystem objects
        err = None
        for attempt in range(self.retries):
            try:
                data = fs.cat_file(path, start=offset, end=offset + size)
                if len(data) != size:
                    raise IOError(f"short read: {len(data)} of {size} bytes")
                ext = ix.member[row].rsplit(".", 1)[-1].lower()
                return data, IMAGE_TYPES.get(ext, "application/octet-stream")
            except FileNotFoundError:
                raise
            except Exception as exc:  # transient S3 / network errors
                err = exc
                time.sleep(0.2 * 2 ** attempt)
        raise IOError(f"{ix.shard[row]}: cannot read {ix.member[row]} ({err})")


class SearchService:
    """What the handler calls: the searcher (one query at a time on the model) and the drawing reader."""

    def __init__(self, searcher, max_body: int = 20 << 20):
        self.searcher = searcher
        self.index = searcher.index
        self.drawings = DrawingReader(self.index)
        self.max_body = max_body
        self._lock = threading.Lock()
        days = self.index.grant_day[self.index.grant_day >= 0]
        self._info = {
            "drawings": self.index.rows, "patents": int(len(self.index.patents)),
            "first_grant": X.day_to_date(int(days.min())) if days.size else None,
            "last_grant": X.day_to_date(int(days.max())) if days.size else None,
            "classes": [{"id": c["id"], "code": c.get("code"), "name": c.get("name")} for c in self.index.classes],
            "views": sorted(set(self.index.view.tolist())), "model": self.index.manifest["model"]["name"],
            "faiss": self.index.spec.describe(), "pending_shards": len(self.index.manifest.get("pending_shards", [])),
        }

    def info(self) -> Dict:
        return self._info

    def search(self, body: Dict) -> Dict:
        from patentclip.evaluation.search import QueryError

        images = []
        for i, s in enumerate(body.get("images") or []):
            if not isinstance(s, str):
                raise QueryError(f"images[{i}] must be a base64 string")
            if s.startswith("data:"):
                s = s.split(",", 1)[-1]
            try:
                images.append(base64.b64decode(s, validate=True))
            except (binascii.Error, ValueError):
                raise QueryError(f"images[{i}] is not valid base64") from None
        try:
            top = int(body.get("top", 24))
        except (TypeError, ValueError):
            raise QueryError("top must be a number") from None
        if not 1 <= top <= 500:
            raise QueryError("top must be between 1 and 500")
        with self._lock:
            doc = self.searcher.query(images=images, image_names=body.get("names") or (), text=body.get("text") or None,
                                      patent=body.get("patent") or None, before=body.get("before") or None,
                                      after=body.get("after") or None, classes=body.get("classes") or None,
                                      views=body.get("views") or None, top=top, combine=body.get("combine", "max"),
                                      with_drawings=True)
        for r in doc["results"]:
            r["best"]["image"] = f"/drawing/{r['best']['row']}"
            for d in r.get("drawings", []):
                d["image"] = f"/drawing/{d['row']}"
        return doc

    def patent(self, patent_id: str) -> Dict:
        rows = self.index.rows_of_patent(patent_id)
        if not len(rows):
            raise KeyError(patent_id)
        r0 = int(rows[0])
        return {"patent_id": patent_id, "grant_date": X.day_to_date(self.index.grant_day[r0]),
                "class": self.index.class_info(self.index.class_id[r0]), "title": self.index.title[r0],
                "drawings": [{**self.index.drawing(r), "image": f"/drawing/{int(r)}"} for r in rows]}


def make_handler(service: SearchService):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "patentclip-search"

        def log_message(self, fmt, *args):  # through logging, not stderr prints
            logging.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj):
            self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json")

        def do_GET(self):
            path = urllib.parse.urlparse(self.path).path
            try:
                if path in ("/", "/index.html"):
                    return self._send(200, static_file("search.html"), STATIC["search.html"])
                if path.startswith("/static/") and path[len("/static/"):] in STATIC:
                    name = path[len("/static/"):]
                    return self._send(200, static_file(name), STATIC[name])
                if path == "/api/info":
                    return self._json(200, service.info())
                m = re.fullmatch(r"/api/patent/([^/]+)", path)
                if m:
                    return self._json(200, service.patent(urllib.parse.unquote(m.group(1))))
                m = re.fullmatch(r"/drawing/(\d+)", path)
                if m:
                    data, ctype = service.drawings.read(int(m.group(1)))
                    return self._send(200, data, ctype, cache=True)
                return self._json(404, {"error": f"no such page: {path}"})
            except KeyError as exc:
                return self._json(404, {"error": f"not in the index: {exc}"})
            except LookupError as exc:
                return self._json(404, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - answered, logged
                logging.exception("GET %s failed", path)
                return self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_POST(self):
            from patentclip.evaluation.search import QueryError

            path = urllib.parse.urlparse(self.path).path
            if path != "/api/search":
                return self._json(404, {"error": f"no such endpoint: {path}"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._json(400, {"error": "bad Content-Length"})
            if length > service.max_body:
                return self._json(413, {"error": f"request of {length} bytes is larger than the server's limit of "
                                                  f"{service.max_body} bytes (--max-upload-mb)"})
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the request must be a JSON object")
                return self._json(200, service.search(body))
            except (QueryError, ValueError) as exc:
                return self._json(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001
                logging.exception("search failed")
                return self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def make_server(searcher, host: str = "127.0.0.1", port: int = 8765, max_body: int = 20 << 20):
    server = http.server.ThreadingHTTPServer((host, port), make_handler(SearchService(searcher, max_body)))
    server.daemon_threads = True
    return server


def serve(searcher, host: str = "127.0.0.1", port: int = 8765, max_body: int = 20 << 20) -> int:
    if host not in LOOPBACK:
        logging.warning("listening on %s: the search page has NO authentication; anyone who reaches this port can "
                        "search the index and read its drawings (docs/search.md)", host)
    server = make_server(searcher, host, port, max_body)
    h, p = server.server_address[:2]
    url = f"http://{'[' + h + ']' if ':' in h else h}:{p}/"
    print(f"patentclip-search: serving {searcher.index.folder} ({searcher.index.rows} drawings) on {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    from patentclip.evaluation.search import main

    sys.exit(main(["serve", *sys.argv[1:]]))
