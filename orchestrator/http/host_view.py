"""What the whole host answers when several workers share its port (`--workers N`,
orchestrator/workers.py): `/metrics`, `/api/admin/sessions` and `/healthz` over every worker,
and which worker a new session (`/offer`) goes to.

Any worker may take any request, so one worker's own answer would show a part of the host. The
worker that takes one of these asks every other worker on its private loopback port (with
WORKER_ONLY_HEADER: "your own answer") and merges:

- `/metrics`: every series summed over the workers (sessions, events, histograms' buckets and
  sums, the session limit), except `livehuman_triton_ready` and the `_created` timestamps,
  which take the smallest value (ready only when every worker's Triton is);
- `/api/admin/sessions`: every worker's sessions in one list, oldest first;
- `/healthz`: sessions and the session limit summed, draining when any worker drains, and
  `workers`: {"count": N, "up": the workers that answered}.

A worker that does not answer within FANOUT_TIMEOUT_S (dead and being restarted, or stuck) is
left out: its sessions are gone from the lists and counts, and `/healthz` says one fewer is up.
The access checks ran in the worker that took the request; its token goes along.

New sessions go to the worker with the fewest: the worker that takes an `/offer` (or a WHEP
client's `POST /whep` for a session of its own) asks the others how many they hold (their
`/healthz`) and, when one holds fewer than it does, forwards the offer there (http/instance_forward.py; marked, so it is placed once). Whichever worker
accepted the connection, the host's sessions stay spread evenly, and a full worker's offer
goes to one with room.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..settings import Settings
from .instance_forward import LOCAL_HOP_HEADER, WORKER_HOST, PeerForwarder
from .request_context import services_of

log = logging.getLogger(__name__)

WORKER_ONLY_HEADER = "X-Livehuman-Worker-Only"
FANOUT_TIMEOUT_S = 2.0
METRICS_PATH, ADMIN_SESSIONS_PATH, HEALTH_PATH = "/metrics", "/api/admin/sessions", "/healthz"
OFFER_PATH = "/offer"
WHEP_PATH = "/whep"  # without ?sessionid=: a WHEP client's own session, placed like an /offer
# Series whose host value is the smallest of the workers' (not their sum).
SMALLEST_OF = ("livehuman_triton_ready",)
CREATED_SUFFIX = "_created"
_PASSED_HEADERS = ("Authorization",)


def merge_metrics(texts: Sequence[str]) -> bytes:
    """Prometheus expositions of the workers as one: each sample (name and labels) summed, the
    smallest taken for SMALLEST_OF and `_created` series. Families keep their HELP and TYPE."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                             family.type, family.unit))
            smallest = family.name in SMALLEST_OF or family.name.endswith(CREATED_SUFFIX)
            samples = values.setdefault(merged.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif smallest:
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    """A collector of already merged families (what generate_latest reads)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_admin_sessions(answers: Sequence[dict]) -> dict:
    """The contract's answer with every worker's `data.sessions`, oldest session first."""
    sessions = [s for answer in answers for s in (answer.get("data") or {}).get("sessions", [])]
    sessions.sort(key=lambda s: s.get("since", 0))
    return {**answers[0], "data": {**(answers[0].get("data") or {}), "sessions": sessions}}


def merge_health(own: dict, others: Sequence[dict], workers: int) -> dict:
    """This worker's /healthz answer, with the host's sessions, limit, drain and workers up."""
    data = dict(own.get("data") or {})
    everyone = [data, *((answer.get("data") or {}) for answer in others)]
    data["sessions"] = sum(d.get("sessions", 0) for d in everyone)
    data["max_sessions"] = sum(d.get("max_sessions", 0) for d in everyone)
    data["draining"] = any(d.get("draining") for d in everyone)
    data["workers"] = {"count": workers, "up": len(everyone)}
    return {**own, "data": data}


class HostView:
    """Asks the other workers of this host for their own answers."""

    def __init__(self, worker_ports: Sequence[int], own_worker: int) -> None:
        self.workers = len(worker_ports)
        self.others_by_index = {i: port for i, port in enumerate(worker_ports)
                                if i != own_worker}
        self._http: aiohttp.ClientSession | None = None

    async def ask(self, request: web.Request,
                  path_qs: str | None = None) -> dict[int, tuple[int, bytes]]:
        """{worker index: (status, body)} of every other worker that answered a GET of
        `path_qs` (default: `request`'s) in time, with `request`'s token."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FANOUT_TIMEOUT_S))
        headers = {name: request.headers[name] for name in _PASSED_HEADERS
                   if name in request.headers}
        headers[WORKER_ONLY_HEADER] = "1"
        path_qs = path_qs or request.rel_url.path_qs

        async def ask_one(port: int) -> tuple[int, bytes] | None:
            try:
                async with self._http.get(f"http://{WORKER_HOST}:{port}{path_qs}",
                                          headers=headers) as response:
                    return response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("worker on port %d did not answer %s: %s", port, path_qs[:100],
                         exc or type(exc).__name__)
                return None

        indexes = list(self.others_by_index)
        answers = await asyncio.gather(*(ask_one(self.others_by_index[i]) for i in indexes))
        return {i: answer for i, answer in zip(indexes, answers) if answer is not None}

    async def least_loaded(self, request: web.Request, own_sessions: int) -> int | None:
        """The index of the other worker holding the fewest sessions, when it holds fewer than
        `own_sessions` (and is not draining); None: keep the session here."""
        counts = {}
        for index, (_, body) in (await self.ask(request, HEALTH_PATH)).items():
            try:
                data = json.loads(body)["data"]
                if not data["draining"]:
                    counts[index] = int(data["sessions"])
            except (ValueError, KeyError, TypeError):
                continue  # not a health answer (a 401 without the token): not a candidate
        if not counts:
            return None
        index = min(counts, key=lambda i: (counts[i], i))
        return index if counts[index] < own_sessions else None

    async def close(self, app: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def install(app: web.Application, settings: Settings, worker_ports: Sequence[int],
            forwarder: PeerForwarder | None) -> None:
    """As one of several workers (`worker_ports` given): the middleware that answers
    METRICS_PATH, ADMIN_SESSIONS_PATH and HEALTH_PATH for the whole host, and places each
    OFFER_PATH on the worker with the fewest sessions (through `forwarder`)."""
    if settings.workers == 1 or not worker_ports or forwarder is None:
        return
    workers = settings.workers
    own_instance = settings.instance_id or 0
    view = HostView(worker_ports, own_instance % workers)

    @web.middleware
    async def whole_host(request: web.Request, handler) -> web.StreamResponse:
        if (request.method == "POST" and LOCAL_HOP_HEADER not in request.headers
                and (request.path == OFFER_PATH
                     or request.path == WHEP_PATH and "sessionid" not in request.query)):
            registry = services_of(request).registry
            if not registry.draining:
                target = await view.least_loaded(request, len(registry))
                if target is not None:
                    instance = own_instance - own_instance % workers + target
                    base_url = forwarder.routes.url_of(instance)
                    if base_url is not None:
                        return await forwarder.forward(request, instance, base_url)
        own = await handler(request)
        if (request.method != "GET" or WORKER_ONLY_HEADER in request.headers
                or request.path not in (METRICS_PATH, ADMIN_SESSIONS_PATH, HEALTH_PATH)
                or not isinstance(own, web.Response)
                or own.status != 200 and request.path != HEALTH_PATH):
            return own
        others = (await view.ask(request)).values()
        if request.path == METRICS_PATH:
            texts = [own.body.decode(), *(body.decode() for status, body in others
                                          if status == 200)]
            return web.Response(body=merge_metrics(texts),
                                headers={"Content-Type": METRICS_CONTENT_TYPE})
        # /healthz answers 503 with its JSON too (draining, Triton not ready).
        answers = [json.loads(body) for status, body in others
                   if status == 200 or request.path == HEALTH_PATH]
        if request.path == ADMIN_SESSIONS_PATH:
            return web.json_response(merge_admin_sessions([json.loads(own.body), *answers]))
        return web.json_response(merge_health(json.loads(own.body), answers, view.workers),
                                 status=own.status)

    app.middlewares.append(whole_host)
    app.on_cleanup.append(view.close)
