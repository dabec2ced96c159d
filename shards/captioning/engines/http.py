"""Engine: any OpenAI-compatible chat-completions endpoint (``vllm serve``, ``transformers serve``, a hosted model
such as the GPT-4V / GPT-4 the LLM-informed paper used).

``POST {base_url}/chat/completions`` with ``model``, ``messages`` (drawings as ``image_url`` parts with a
``data:`` URL), ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p`` and the request's
``seed``; ``extra_body`` adds endpoint-specific fields (``top_k``, ``chat_template_kwargs``, ...). The API key, if
any, is read from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``) and sent as a
bearer token; it is never written anywhere.

**Bounded concurrency**: at most ``concurrency`` requests in flight (one aiohttp session, one connection each).

**Rate limits**: ``requests_per_minute`` and ``tokens_per_minute`` are token buckets refilled continuously
(a burst of at most one second's worth of requests; a minute's worth of tokens). A request takes an estimate of
its tokens (its text / 4, 1000 per image, plus ``max_tokens``) before it is sent, and the difference to the
reported usage afterwards, so the token rate follows what the endpoint counts.

**Retries**: a connection error, a timeout, an unreadable response and the statuses in :data:`RETRY_STATUSES`
(408, 409, 425, 429, 500, 502, 503, 504) are retried up to ``max_retries`` times. The wait is the endpoint's
``Retry-After`` (or ``retry-after-ms``) when it sends one, else :func:`backoff_delay`: ``backoff * 2**attempt``
seconds, capped at ``backoff_max``, times a factor in [0.5, 1.5) that is a pure function of the request's seed and
the attempt (spread, yet repeatable). Other statuses fail the request at once (its drawing is reported and retried
by a rerun), except 401 and 403 (credentials refused) and 404 (no such endpoint or model), which stop the run
with :class:`EngineError` and the models the endpoint lists.

Before the run, one 1-token request checks that the endpoint serves the model (a wrong name stops the run at once,
with the models the endpoint lists). **Counts**: tokens from the responses' ``usage``, the cost at ``price_in`` / ``price_out`` per million tokens,
retries by status, and ``generate_seconds`` = the time during which at least one request was in flight.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import aiohttp

from patentclip.plugins.seeding import stable_int

from .base import Engine, EngineError, EngineStats, Request, Result, openai_messages

RETRY_STATUSES = (408, 409, 425, 429, 500, 502, 503, 504)
FATAL_STATUSES = (401, 403, 404)
IMAGE_TOKEN_ESTIMATE = 1000


def backoff_delay(attempt: int, seed: int, backoff: float, backoff_max: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: ``min(backoff_max, backoff * 2**attempt)`` times a factor in
    [0.5, 1.5) that is a pure function of (seed, attempt)."""
    u = stable_int(seed, attempt) / 2.0 ** 64
    return min(backoff_max, backoff * 2.0 ** attempt) * (0.5 + u)


def retry_after_seconds(headers) -> Optional[float]:
    """The wait an endpoint asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("Retry-After")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class TokenBucket:
    """``rate`` units per second, at most ``capacity`` stored; :meth:`take` waits until ``n`` are there (a debt from
    :meth:`adjust` is paid first). ``rate`` 0: unlimited."""

    def __init__(self, rate: float, capacity: float):
        self.rate = float(rate)
        self.capacity = max(1.0, float(capacity))
        self.level = self.capacity
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, n: float) -> None:
        if not self.rate:
            return
        n = min(float(n), self.capacity)
        async with self.lock:
            while True:
                self._refill()
                if self.level >= n:
                    self.level -= n
                    return
                await asyncio.sleep((n - self.level) / self.rate)

    def adjust(self, n: float) -> None:
        """Take ``n`` more (or give back ``-n``) after the fact."""
        if self.rate:
            self._refill()
            self.level = min(self.capacity, self.level - n)


def estimate_tokens(messages: List[dict], max_tokens: int) -> int:
    """A rough token count of a request before it is sent (module docstring)."""
    n = 0
    for m in messages:
        c = m["content"]
        if isinstance(c, str):
            n += len(c) // 4 + 4
        else:
            for p in c:
                n += IMAGE_TOKEN_ESTIMATE if p.get("type") in ("image", "image_url") else len(p.get("text", "")) // 4
    return n + max_tokens


class HTTPEngine(Engine):
    """OpenAI-compatible endpoint engine (module docstring)."""

    name = "http"

    def __init__(self, model: str, *, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 6, backoff: float = 1.0, backoff_max: float = 60.0, timeout: float = 600.0,
                 requests_per_minute: float = 0.0, tokens_per_minute: float = 0.0,
                 max_tokens_field: str = "max_tokens", extra_body: Optional[Dict[str, Any]] = None,
                 vision: bool = True, probe: bool = True, **kw):
        super().__init__(model, **kw)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff, self.backoff_max = float(backoff), float(backoff_max)
        self.timeout = float(timeout)
        self.max_tokens_field = max_tokens_field
        self.extra_body = dict(extra_body or {})
        self.vision = vision
        self.rpm, self.tpm = float(requests_per_minute or 0), float(tokens_per_minute or 0)
        self.loop = asyncio.new_event_loop()
        self._session: Optional[aiohttp.ClientSession] = None
        self._in_flight = 0
        self._busy_since = 0.0
        self._buckets: Optional[Tuple[TokenBucket, TokenBucket]] = None
        try:
            self.listed_models = self.loop.run_until_complete(self._list_models())
            if probe:
                self._probe()
        except EngineError:
            self.close()
            raise
        self.stats = EngineStats()  # the probe is not part of the run

    # ---- connection ----------------------------------------------------------------------------------------------
    def _headers(self) -> Dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self._headers())
            self._buckets = (TokenBucket(self.rpm / 60.0, max(1.0, self.rpm / 60.0)),
                             TokenBucket(self.tpm / 60.0, self.tpm))
        return self._session

    async def _list_models(self) -> Optional[List[str]]:
        """The endpoint's ``GET /models`` ids (``None`` when it has no such route); refused credentials stop here."""
        try:
            async with self._sess().get(f"{self.base_url}/models") as resp:
                body = await resp.text()
                if resp.status in (401, 403):
                    raise EngineError(f"http: {self.base_url} refused the credentials (HTTP {resp.status}; the key "
                                      f"is read from ${self.api_key_env}): {body[:300]}")
                if resp.status != 200:
                    return None
                data = json.loads(body).get("data") or []
                return [str(m.get("id")) for m in data if isinstance(m, dict)]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError) as exc:
            raise EngineError(f"http: cannot reach {self.base_url}/models ({type(exc).__name__}: {exc}); is the "
                              "server running and --url its OpenAI base URL (ending in /v1)?") from None

    def _probe(self) -> None:
        """One 1-token request before the run: a wrong model name or an endpoint that cannot serve it stops the run
        here, with the models the endpoint lists, instead of failing every drawing after its retries."""
        retries, self.max_retries = self.max_retries, min(self.max_retries, 2)
        try:
            probe = Request([{"role": "user", "content": "Hello"}], 0, 1, 0.0)
            r = self.loop.run_until_complete(self._one(probe, asyncio.Semaphore(1), self._prepare([probe])[0]))
        finally:
            self.max_retries = retries
        if r.finish_reason == "error":
            listed = f"; the endpoint lists: {', '.join(self.listed_models)}" if self.listed_models else ""
            raise EngineError(f"http: {self.base_url} cannot serve model {self.model!r}: {r.error}{listed}")

    def identity(self) -> Dict[str, Any]:
        """The model name and the extra body fields (the URL is not part of it: an endpoint that moved to another
        node continues the same run)."""
        return {"engine": self.name, "model": self.model, "extra_body": self.extra_body or None}

    # ---- requests ------------------------------------------------------------------------------------------------
    def _prepare(self, requests: List[Request]) -> List[Tuple[str, int]]:
        """Each request's JSON body (drawings as PNG data URLs) and its token estimate."""
        return [(json.dumps(self._body(r)), estimate_tokens(r.messages, r.max_tokens)) for r in requests]

    def _generate(self, requests: List[Request], prepared) -> List[Result]:
        return self.loop.run_until_complete(self._all(requests, prepared))

    async def _all(self, requests: List[Request], prepared) -> List[Result]:
        sem = asyncio.Semaphore(self.concurrency)
        return list(await asyncio.gather(*(self._one(r, sem, p) for r, p in zip(requests, prepared))))

    def _enter(self) -> None:
        if self._in_flight == 0:
            self._busy_since = time.perf_counter()
        self._in_flight += 1

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self.stats.generate_seconds += time.perf_counter() - self._busy_since

    def _body(self, req: Request) -> Dict[str, Any]:
        body = {"model": self.model, "messages": openai_messages(req.messages), self.max_tokens_field: req.max_tokens,
                "temperature": req.temperature, "seed": req.seed, "n": 1}
        if req.temperature > 0:
            body["top_p"] = req.top_p
        body.update(self.extra_body)
        return body

    async def _one(self, req: Request, sem: asyncio.Semaphore, prepared: Tuple[str, int]) -> Result:
        session = self._sess()
        rpm, tpm = self._buckets
        body, estimate = prepared
        last = ""
        for attempt in range(self.max_retries + 1):
            await rpm.take(1)
            await tpm.take(estimate)
            status, headers, text = None, {}, ""
            async with sem:
                self._enter()
                try:
                    async with session.post(f"{self.base_url}/chat/completions", data=body) as resp:
                        status, headers = resp.status, resp.headers
                        text = await resp.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                finally:
                    self._leave()
            if status == 200:
                try:
                    data = json.loads(text)
                    choice = data["choices"][0]
                    content = choice["message"].get("content") or ""
                    usage = data.get("usage") or {}
                    pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    last = f"unreadable response ({type(exc).__name__}: {exc}): {text[:200]!r}"
                    status = None
                else:
                    tpm.adjust((pt + ct) - estimate if (pt or ct) else 0)
                    finish = "length" if choice.get("finish_reason") == "length" else "stop"
                    return Result(content, finish, pt, ct, retries=attempt)
            elif status is not None:
                last = f"HTTP {status}: {text[:300]}"
            if status in FATAL_STATUSES:
                listed = (f"; the endpoint lists: {', '.join(self.listed_models)}" if self.listed_models else "")
                raise EngineError(f"http: {self.base_url}/chat/completions answered {last} for model "
                                  f"{self.model!r}{listed}")
            if status is not None and status not in RETRY_STATUSES:
                return Result(finish_reason="error", error=last, retries=attempt)
            if attempt == self.max_retries:
                break
            key = str(status) if status is not None else "connection"
            self.stats.retried_by_status[key] = self.stats.retried_by_status.get(key, 0) + 1
            wait = retry_after_seconds(headers) if headers else None
            if wait is None:
                wait = backoff_delay(attempt, req.seed, self.backoff, self.backoff_max)
            await asyncio.sleep(min(wait, self.backoff_max))
        return Result(finish_reason="error", error=f"gave up after {self.max_retries + 1} attempts; last: {last}",
                      retries=self.max_retries)

    def close(self) -> None:
        if self._session is not None:
            self.loop.run_until_complete(self._session.close())
            self._session = None
        self.loop.close()
