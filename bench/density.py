"""How many sessions one machine holds, and what each costs the server: idle, talking, a mix.

For each scenario a fresh `python -m orchestrator` (embedded Triton) runs as its own process;
client worker processes (bench/client_pool.py: light aiortc clients that decode nothing) open
sessions in steps (N = 1, 2, 4, ...; sessions are added, never reopened) and, after a settling
time, the benchmark measures over a steady window:

- delivered video at the client: each session's frames per second in 1 s bins of the window,
  by arrival; a step holds when the worst session's median bin is >= FPS_GOAL;
- the server's CPU: user + system seconds of its process tree (orchestrator, tritonserver and
  its python-backend stubs) over the window / wall seconds, and its memory (RSS and PSS from
  /proc/PID/smaps_rollup) at the window's end;
- the clients' own CPU and event-loop lag, and the whole machine's busy cores (other work on
  a shared machine shows as `other_cores`): a client worker whose loop runs late delivers
  frames late, so such a step is flagged `client_saturated` and the search stops there.

- the server's event loop and where its time goes, from its /metrics over the same window:
  `livehuman_event_loop_lag_seconds` (how late its probe's 10 ms sleep woke: p99 interpolated
  in the histogram's bucket as PromQL's histogram_quantile does, and the max as the upper
  bound of the highest bucket hit) and `livehuman_stage_seconds` (each media stage's count,
  mean and p50/p99: bench/README.md, "Where a tick goes"), and how many of the idle viewers'
  asks for a shared frame had to wait for its encode (`idle_asks_waited` of `idle_asks`).

Scenarios: `idle` (nobody speaks), `talking` (every session speaks without pause: echo
utterances kept queued, the next posted at each SSE `end`), `mix` (ceil(10 %) of the sessions
talk, the rest idle; `--talking K`: K of them talk, e.g. `--steps 12 --talking 4` is issue 20's
8 idle + 4 talking). The cost per session is the slope of a least-squares line over N (CPU:
steps that held the fps goal; memory: every step), and "sessions by server CPU only" is the
machine's cores / that slope: what the server alone would hold if the clients were elsewhere.

Writes bench/results/density.json and prints table rows for bench/README.md: the scenarios,
then every step (idle and talking sessions' worst fps, the loop's lag, the stages).

    python bench/density.py [--scenarios idle,talking,mix] [--max-n 128] [--seconds 10]
    python bench/density.py --scenarios mix --steps 12 --talking 4   # issue 20's mix

`--workers 1,2` runs each scenario once per server `--workers` count in the same run (the
server's process tree includes the parent, every worker and Triton) and prints the comparison:
sessions held and server cores per session by count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's orchestrator, also in the client workers

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from client_pool import ClientPool  # noqa: E402  (bench/ is the script's directory)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from server_process import ServerProcess, start_server  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FPS_GOAL = 24.5
SCENARIOS = ("idle", "talking", "mix")
MIX_TALKING_SHARE = 0.10
DEFAULT_STEPS = {
    "idle": (1, 2, 4, 8, 16, 32, 64, 100, 128),
    "talking": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
    "mix": (1, 2, 4, 8, 16, 32, 64, 100, 128),
}
SESSION_SLACK = 4  # --max-session above the largest step: a slow close never blocks an offer
SETUP_TIMEOUT_S = 60  # --setup-timeout: offers made while the machine is saturated are slow
# A client worker is saturated (its fps would be its own limit) when its event loop wakes a
# 10 ms sleep this late (95th percentile: one video frame interval), or it uses a whole core.
CLIENT_LAG_LIMIT_MS = 40.0
CLIENT_CORES_LIMIT = 0.9
MACHINE_BUSY_SATURATED = 0.95  # share of the machine's cores
# A talking session must have been speaking this share of the window (SSE start to end): a
# server too slow to keep speech flowing fails the step like one too slow to keep the fps.
SPEAKING_MIN = 0.9
# Every session sends a 20 ms Opus packet 50 times a second (silence too): a step whose
# sessions got fewer did not hold, whatever its video did.
AUDIO_PACKETS_MIN_PER_S = 45
BYTES_PER_MIB = 1024 * 1024
# Issue 14's goals (bench/README.md).
GOALS = {"idle_cores_per_session": 0.01, "idle_mb_per_session": 20.0,
         "talking_cores_per_session": 0.08, "idle_sessions": 100, "talking_sessions": 12}


# Issue 20's goal for the server's event loop under the 8 idle + 4 talking mix.
LOOP_LAG_P99_GOAL_MS = 20.0
LOOP_LAG_METRIC = "livehuman_event_loop_lag_seconds"
STAGE_METRIC = "livehuman_stage_seconds"
IDLE_ASKS_METRIC = "livehuman_idle_stream_asks"  # {frame="ready"|"waited"}


def talkers(scenario: str, n: int, talking: int | None = None) -> int:
    """How many of `n` sessions talk (`talking`: a fixed number in the mix, at most n)."""
    if scenario == "mix" and talking is not None:
        return min(talking, n)
    return {"idle": 0, "talking": n, "mix": math.ceil(n * MIX_TALKING_SHARE)}[scenario]


Buckets = dict[str, list[tuple[float, float]]]  # series key -> [(upper bound s, cumulative count)]


async def histograms(base_url: str) -> tuple[Buckets, dict[str, float]]:
    """The server's loop-lag and stage histograms now: cumulative buckets and sums by series
    ("loop", or the stage's name). Empty when the server has none (an older server)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    buckets: Buckets = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == IDLE_ASKS_METRIC:
            for sample in family.samples:
                sums[f"idle_asks:{sample.labels.get('frame')}"] = sample.value
            continue
        if family.name not in (LOOP_LAG_METRIC, STAGE_METRIC):
            continue
        for sample in family.samples:
            key = "loop" if family.name == LOOP_LAG_METRIC else sample.labels.get("stage", "?")
            if sample.name.endswith("_bucket"):
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                sums[key] = sample.value
    return {k: sorted(v) for k, v in buckets.items()}, sums


def quantile_s(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's window (cumulative [(bound, count)]), interpolated
    linearly inside its bucket like PromQL's histogram_quantile; None without observations."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: that bound, a lower limit
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def max_bound_s(cumulative: list[tuple[float, float]]) -> float | None:
    """The upper bound of the highest bucket with an observation: the max is at most this."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    return next(bound for bound, count in cumulative if count >= total)


def histogram_window(before: tuple[Buckets, dict], after: tuple[Buckets, dict],
                     seconds: float) -> dict:
    """What the loop probe and each stage recorded between two readings."""
    (b0, s0), (b1, s1) = before, after
    out: dict = {"loop_lag_p99_ms": None, "loop_lag_max_ms": None, "stages": {}}
    asks = {frame: s1.get(f"idle_asks:{frame}", 0.0) - s0.get(f"idle_asks:{frame}", 0.0)
            for frame in ("ready", "waited")}
    # Idle viewers' asks for a shared frame that had to wait for its encode (issue 20: ~0).
    out["idle_asks"] = int(sum(asks.values()))
    out["idle_asks_waited"] = int(asks["waited"])
    for key, cumulative in b1.items():
        start = dict(b0.get(key, []))
        window = [(bound, count - start.get(bound, 0.0)) for bound, count in cumulative]
        count = window[-1][1] if window else 0
        if key == "loop":
            p99, top = quantile_s(0.99, window), max_bound_s(window)
            out["loop_lag_p99_ms"] = None if p99 is None else round(p99 * 1000, 2)
            finite = [bound for bound, _ in window if not math.isinf(bound)]
            out["loop_lag_max_ms"] = None if top is None else (
                f">{finite[-1] * 1000:g}" if math.isinf(top) else round(top * 1000, 1))
            out["loop_lag_samples"] = int(count)
            continue
        if count <= 0:
            continue
        total_s = s1.get(key, 0.0) - s0.get(key, 0.0)
        out["stages"][key] = {
            "count": int(count),
            "per_s": round(count / seconds, 1),
            "mean_ms": round(total_s / count * 1000, 3),
            "p50_ms": round(quantile_s(0.5, window) * 1000, 3),
            "p99_ms": round(quantile_s(0.99, window) * 1000, 3),
            "busy_cores": round(total_s / seconds, 4),  # seconds of it per second of window
        }
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine (os.cpu_count()) have spent busy since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cores_available() -> int:
    return len(os.sched_getaffinity(0))


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


async def window(server: ServerProcess, pool: ClientPool, seconds: float) -> dict:
    """Measure the server, the clients and the machine over `seconds` from now."""
    await pool.ask_all({"op": "window_start"})
    hist0 = await histograms(server.base_url)
    # One walk of the process tree at each end: the total is the sum of its roles.
    roles0, busy0, t0 = server.cpu_seconds_by_role(), machine_busy_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    roles1, busy1, t1 = server.cpu_seconds_by_role(), machine_busy_seconds(), time.monotonic()
    cpu0, cpu1 = sum(roles0.values()), sum(roles1.values())
    hist1 = await histograms(server.base_url)
    memory = server.memory_kib()
    workers = await pool.ask_all({"op": "window_end", "t0": t0, "t1": t1})
    wall = t1 - t0
    server_cores = (cpu1 - cpu0) / wall
    client_cores = sum(w["cpu_cores"] for w in workers)
    machine_cores = (busy1 - busy0) / wall
    return {
        "window_s": wall,
        "server_cores": server_cores,
        # Where the server's cores went: the orchestrator's processes, tritonserver, and each
        # python-backend model's stubs (TTS, lip-sync...): the split of a talking session.
        "server_cores_by_process": {role: round((roles1[role] - roles0.get(role, 0.0)) / wall, 4)
                                    for role in sorted(roles1)},
        "server_rss_mib": memory["rss_kib"] / 1024,
        "server_pss_mib": memory["pss_kib"] / 1024,
        "client_cores": client_cores,
        "client_cores_per_worker": [w["cpu_cores"] for w in workers],
        "client_loop_lag_p95_ms": max(w["loop_lag_p95_ms"] for w in workers),
        "client_loop_lag_max_ms": max(w["loop_lag_max_ms"] for w in workers),
        "machine_busy_cores": machine_cores,
        "other_cores": max(0.0, machine_cores - server_cores - client_cores),
        "client_saturated": any(w["loop_lag_p95_ms"] > CLIENT_LAG_LIMIT_MS
                                or w["cpu_cores"] > CLIENT_CORES_LIMIT for w in workers),
        "machine_saturated": machine_cores > MACHINE_BUSY_SATURATED * os.cpu_count(),
        "sessions": [s for w in workers for s in w["sessions"]],
        "talker_errors": [e for w in workers for e in w["talker_errors"]],
        **histogram_window(hist0, hist1, wall),
    }


def step_row(n: int, talking: int, measured: dict) -> dict:
    sessions = measured.pop("sessions")
    medians = [s["median_fps"] for s in sessions]
    speaking = [s["speaking_fraction"] for s in sessions if s["talking"]]
    row = {
        "sessions": n,
        "talking": talking,
        "idle": n - talking,
        "sessions_seen": len(sessions),
        "worst_median_fps": min(medians, default=0.0),
        "worst_idle_median_fps": min((s["median_fps"] for s in sessions if not s["talking"]),
                                     default=None),
        "worst_talking_median_fps": min((s["median_fps"] for s in sessions if s["talking"]),
                                        default=None),
        "worst_mean_fps": min((s["mean_fps"] for s in sessions), default=0.0),
        "worst_bin_fps": min((s["min_bin_fps"] for s in sessions), default=0.0),
        "skipped_ticks": sum(s["skipped_ticks"] for s in sessions),
        "min_audio_packets_per_s": min((s["audio_packets_per_s"] for s in sessions), default=0),
        "min_speaking_fraction": min(speaking, default=None),
        "posts_refused": sum(s.get("posts_refused", 0) for s in sessions),
        **measured,
        "median_fps_per_session": [round(m, 1) for m in medians],
    }
    row["server_cores_per_session"] = row["server_cores"] / n
    row["speech_flowing"] = not speaking or min(speaking) >= SPEAKING_MIN
    row["audio_flowing"] = row["min_audio_packets_per_s"] >= AUDIO_PACKETS_MIN_PER_S
    row["held"] = (len(sessions) == n and row["worst_median_fps"] >= FPS_GOAL
                   and row["speech_flowing"] and row["audio_flowing"])
    return row


def line_fit(xs: list[float], ys: list[float], y_without_sessions: float) -> dict | None:
    """Least-squares slope and intercept over the steps; with one step, its rise over the
    server without sessions divided by N (one-time costs of a first session included)."""
    if not xs:
        return None
    if len(set(xs)) < 2:
        return {"slope": (ys[-1] - y_without_sessions) / xs[-1],
                "intercept": y_without_sessions, "points": len(xs),
                "method": "(one step - no sessions) / N"}
    slope, intercept = np.polyfit(xs, ys, 1)
    return {"slope": float(slope), "intercept": float(intercept), "points": len(xs),
            "method": "least squares over N"}


def summarize(scenario: str, baseline: dict, rows: list[dict], stop_reason: str) -> dict:
    held = [r for r in rows if r["held"]]
    cpu = line_fit([r["sessions"] for r in held], [r["server_cores"] for r in held],
                   baseline["server_cores"])
    memory = line_fit([r["sessions"] for r in rows], [r["server_pss_mib"] for r in rows],
                      baseline["server_pss_mib"])
    cores = cores_available()
    best = held[-1] if held else None
    return {
        "baseline_no_sessions": baseline,
        "rows": rows,
        "stop_reason": stop_reason,
        "held_sessions": best["sessions"] if best else 0,
        "worst_median_fps_at_held": best["worst_median_fps"] if best else None,
        "worst_mean_fps_at_held": best["worst_mean_fps"] if best else None,
        "client_cores_at_held": best["client_cores"] if best else None,
        "client_saturated_at": next((r["sessions"] for r in rows if r["client_saturated"]),
                                    None),
        "server_cores_per_session": cpu,
        "server_pss_mib_per_session": memory,
        "sessions_by_server_cpu_only": (int(cores // cpu["slope"])
                                        if cpu and cpu["slope"] > 0 else None),
    }


async def run_scenario(scenario: str, steps: list[int], args: argparse.Namespace,
                       workers: int | None = None) -> dict:
    """One scenario on a fresh server; `workers`: its --workers (None: the server's default).
    --max-session is per worker: each could take every session."""
    server = await start_server("--max-session", str(max(steps) + SESSION_SLACK),
                                "--setup-timeout", str(SETUP_TIMEOUT_S),
                                *(("--workers", str(workers)) if workers else ()),
                                *shlex.split(args.server_args))
    pool = ClientPool(args.client_workers, server.base_url)
    rows: list[dict] = []
    stop_reason = f"largest step ({max(steps)}) held"
    try:
        await asyncio.sleep(args.settle)
        baseline = await window(server, pool, args.seconds)
        for key in ("sessions", "talker_errors", "client_saturated"):
            baseline.pop(key)
        print(json.dumps({"scenario": scenario, "baseline": baseline}), flush=True)
        opened = opened_talking = 0
        for n in steps:
            talking = talkers(scenario, n, args.talking)
            new_talkers = talking - opened_talking
            answer = await pool.open([True] * new_talkers + [False] * (n - opened - new_talkers))
            opened, opened_talking = n, talking
            if answer["failed"]:
                stop_reason = f"offers failed at N={n}: {answer['failed'][:3]}"
                print(stop_reason, flush=True)
                break
            await asyncio.sleep(args.settle)
            row = step_row(n, talking, await window(server, pool, args.seconds))
            rows.append(row)
            printed = {k: v for k, v in row.items() if k != "median_fps_per_session"}
            print(json.dumps({"scenario": scenario, **printed}), flush=True)
            if not row["held"]:
                stop_reason = (f"fps below {FPS_GOAL} at N={n}" if row["speech_flowing"]
                               else f"talking sessions silent > {1 - SPEAKING_MIN:.0%} at N={n}")
                stop_reason = (stop_reason
                               + (" (client workers saturated: may be their limit)"
                                  if row["client_saturated"] else "")
                               + (" (machine saturated)" if row["machine_saturated"] else ""))
                break
            if row["client_saturated"]:
                stop_reason = f"client workers saturated at N={n} (fps still held)"
                break
    finally:
        await pool.close()
        server.stop()
    return summarize(scenario, baseline, rows, stop_reason)


def goals_met(scenarios: dict) -> dict:
    met = {}
    idle, talking = scenarios.get("idle"), scenarios.get("talking")
    if idle and idle["server_cores_per_session"]:
        met["idle_cores_per_session"] = (idle["server_cores_per_session"]["slope"]
                                         <= GOALS["idle_cores_per_session"])
        met["idle_sessions"] = (idle["sessions_by_server_cpu_only"] or 0) >= GOALS["idle_sessions"]
    if idle and idle["server_pss_mib_per_session"]:
        met["idle_mb_per_session"] = (idle["server_pss_mib_per_session"]["slope"]
                                      * BYTES_PER_MIB / 1e6 <= GOALS["idle_mb_per_session"])
    if talking and talking["server_cores_per_session"]:
        met["talking_cores_per_session"] = (talking["server_cores_per_session"]["slope"]
                                            <= GOALS["talking_cores_per_session"])
        met["talking_sessions"] = ((talking["sessions_by_server_cpu_only"] or 0)
                                   >= GOALS["talking_sessions"])
    return met


def steps_table(result: dict) -> str:
    """Every step: the worst idle and talking session, the server's loop lag, its cores."""
    lines = ["| scenario | sessions (idle + talking) | worst idle / talking median fps | "
             f"loop lag p99 / max ms (goal p99 <= {LOOP_LAG_P99_GOAL_MS:g}) | server cores | "
             "idle asks that waited for an encode |",
             "|---|---|---|---|---|---|"]

    def fps(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def ms(value: float | str | None) -> str:
        return "-" if value is None else value if isinstance(value, str) else f"{value:g}"

    for name, s in result["scenarios"].items():
        for r in s["rows"]:
            lines.append(
                f"| {name} | {r['sessions']} ({r['idle']} + {r['talking']}) | "
                f"{fps(r['worst_idle_median_fps'])} / {fps(r['worst_talking_median_fps'])} | "
                f"{ms(r['loop_lag_p99_ms'])} / <= {ms(r['loop_lag_max_ms'])} | "
                f"{r['server_cores']:.2f} | {r['idle_asks_waited']} of {r['idle_asks']} |")
    return "\n".join(lines)


def stages_table(result: dict) -> str:
    """Where the server's time went at each scenario's largest step (bench/README.md, "Where
    a tick goes"): per stage, its count per second, mean, p50, p99 and cores."""
    lines = ["| scenario, sessions | stage | per s | mean ms | p50 ms | p99 ms | cores |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["scenarios"].items():
        if not s["rows"]:
            continue
        r = s["rows"][-1]
        for stage, t in sorted(r["stages"].items()):
            lines.append(f"| {name}, {r['idle']} + {r['talking']} | {stage} | {t['per_s']} | "
                         f"{t['mean_ms']} | {t['p50_ms']} | {t['p99_ms']} | {t['busy_cores']} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    cores = result["cores_available"]
    lines = [f"| scenario | sessions held at >= {FPS_GOAL} fps | worst median / mean fps of a "
             "session there | stopped by | server cores / session | server PSS MB / session | "
             f"sessions by server CPU only ({cores} cores) | client cores at held N |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in result["scenarios"].items():
        cpu, mem = s["server_cores_per_session"], s["server_pss_mib_per_session"]
        best = next((r for r in s["rows"] if r["sessions"] == s["held_sessions"]), None)
        fps = f"{best['worst_median_fps']:.1f} / {best['worst_mean_fps']:.1f}" if best else "-"
        client = f"{best['client_cores']:.2f}" if best else "-"
        lines.append(
            f"| {name} | {s['held_sessions']} | {fps} | {s['stop_reason']} | "
            + (f"{cpu['slope']:.3f} ({cpu['points']} steps)" if cpu else "-") + " | "
            + (f"{mem['slope'] * BYTES_PER_MIB / 1e6:.1f} ({mem['points']} steps)" if mem else "-")
            + f" | {s['sessions_by_server_cpu_only'] or '-'} | {client} |")
    return "\n".join(lines)


def scenario_name(scenario: str, workers: int | None, compared: bool) -> str:
    """The scenario's key: with several --workers counts compared, e.g. "idle --workers 2"."""
    return f"{scenario} --workers {workers}" if compared else scenario


def workers_comparison(scenarios: dict, args: argparse.Namespace) -> dict | None:
    """Per scenario, the sessions held and the server cores per session of each --workers count
    (None unless several counts were run)."""
    if len(args.workers) < 2:
        return None
    comparison = {}
    for scenario in args.scenarios:
        by_count = {}
        for n in args.workers:
            measured = scenarios[scenario_name(scenario, n, True)]
            cpu = measured["server_cores_per_session"]
            by_count[n] = {"held_sessions": measured["held_sessions"],
                           "server_cores_per_session": cpu["slope"] if cpu else None}
        comparison[scenario] = by_count
    return comparison


async def run(args: argparse.Namespace) -> dict:
    scenarios = {}
    compared = len(args.workers) > 1
    for scenario in args.scenarios:
        steps = [n for n in (args.steps or DEFAULT_STEPS[scenario]) if n <= args.max_n]
        for workers in args.workers or [None]:
            name = scenario_name(scenario, workers, compared)
            scenarios[name] = await run_scenario(scenario, steps, args, workers)
    return {"workers": args.workers, "workers_comparison": workers_comparison(scenarios, args),
            "benchmark": "density", "commit": git_commit(), "cpus": os.cpu_count(),
            "cores_available": cores_available(), "fps_goal": FPS_GOAL,
            "window_s": args.seconds, "settle_s": args.settle,
            "client_workers": args.client_workers, "server_args": args.server_args,
            "mix_talking": args.talking,
            "goals": GOALS, "scenarios": scenarios, "goals_met": goals_met(scenarios),
            "note": "clients run in their own processes on the same machine (light: no "
                    "decoding); server CPU and memory are its process tree's alone"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        type=lambda s: [x for x in s.split(",") if x],
                        help="comma-separated, of idle, talking, mix (default: all)")
    parser.add_argument("--max-n", type=int, default=128, help="largest N tried (default 128)")
    parser.add_argument("--steps", type=lambda s: sorted({int(x) for x in s.split(",")}),
                        help="session counts to try, e.g. 1,2,4,8 (default per scenario: "
                        + "; ".join(f"{k} {','.join(map(str, v))}"
                                    for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="steady window measured at each step (default 10)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between opening a step's sessions and its window (default 3)")
    parser.add_argument("--client-workers", type=int, default=2,
                        help="client processes the sessions are spread over (default 2)")
    parser.add_argument("--talking", type=int, default=None,
                        help="mix: this many sessions of each step talk (default: ceil(10 %%)); "
                        "--scenarios mix --steps 12 --talking 4 is 8 idle + 4 talking")
    parser.add_argument("--server-args", default="",
                        help="extra flags for python -m orchestrator, one string "
                        "(e.g. --server-args='--tts espeak')")
    parser.add_argument("--workers", default=[],
                        type=lambda s: [int(x) for x in s.split(",") if x],
                        help="--workers of the server, e.g. 2; a comma list (1,2) runs every "
                        "scenario once per count, in this run, and compares them (default: the "
                        "server's own, 1)")
    parser.add_argument("--output", type=Path, default=RESULTS / "density.json")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: choose from {', '.join(SCENARIOS)}")
    if args.max_n < 1 or args.client_workers < 1 or args.seconds < 2:
        parser.error("--max-n and --client-workers must be >= 1, --seconds >= 2")
    if any(n < 1 for n in args.workers):
        parser.error("--workers: counts >= 1")
    if args.steps and (min(args.steps) < 1 or min(args.steps) > args.max_n):
        parser.error("--steps must be >= 1, and one at most --max-n")
    if args.talking is not None and args.talking < 0:
        parser.error("--talking must be >= 0")
    return args


def main() -> None:
    args = parse_args()
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(steps_table(result))
    print(stages_table(result))
    print(json.dumps({"goals_met": result["goals_met"]}))
    if result["workers_comparison"]:
        print(json.dumps({"workers_comparison": result["workers_comparison"]}))


if __name__ == "__main__":
    main()
