"""bench_engine.py's table: each row's figures beside its peer, its floor and its goal (issue 26).

Goals are those of issue 26 for this machine. Where a floor is measured, each
row says what fraction of it nuvom reaches and whether the goal lies beyond it
("out of reach: the goal is Nx the floor"): a goal may be called out of reach
only with its floor measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

GOAL_RSS_MB = 20.0
HEAD = [
    "| # | measure | nuvom | peer, same run | floor, same run | goal | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- |",
]


@dataclass
class Results:
    """Figures per system and round: ``runs[system][round] = {"rate": ..., "cpu": ...}``."""

    args: argparse.Namespace
    rows: set[int]
    runs: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def med(self, key: str, metric: str = "rate") -> float:
        values = [f[metric] for f in self.runs.get(key, {}).values() if metric in f]
        return finite_median(values)

    def ratio(self, a: str, b: str, ma: str = "rate", mb: str = "rate") -> float:
        """Median over rounds of ``a``'s figure divided by ``b``'s of the same round."""
        ra, rb = self.runs.get(a, {}), self.runs.get(b, {})
        values = [ra[r][ma] / rb[r][mb] for r in ra if r in rb and ma in ra[r] and mb in rb[r] and rb[r][mb]]
        return finite_median(values)


def finite_median(values: list[float]) -> float:
    """The median of the figures that were measured (a run too short for a CPU figure has NaN)."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


# -- words ------------------------------------------------------------------------------
def js(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f} jobs/s"


def us(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f} us"


def times(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def of(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def check(value: float, goal: float, at_least: bool = True) -> str:
    if math.isnan(value):
        return "not measured"
    return "met" if (value >= goal if at_least else value <= goal) else "not met"


def beyond_rate(goal: float, floor: float, name: str) -> str:
    """Whether a jobs/s goal lies beyond a floor's jobs/s."""
    if math.isnan(goal) or math.isnan(floor):
        return ""
    if goal > floor:
        return f"out of reach: the goal is {goal / floor:.1f}x {name}"
    return f"within {name}: the goal is {goal / floor:.2f} of it"


def beyond_cpu(goal: float, floor: float, name: str) -> str:
    """Whether a CPU-a-job goal lies below what a floor spends."""
    if math.isnan(floor):
        return ""
    if floor > goal:
        return f"out of reach: {name} alone spends {floor:.0f} us a job"
    return f"within {name}: it spends {floor:.0f} us a job"


def line(num: str, measure: str, nuvom: str, peer: str, floor: str, goal: str, verdict: list[str]) -> str:
    return f"| {num} | {measure} | {nuvom} | {peer} | {floor} | {goal} | {'; '.join(v for v in verdict if v)} |"


# -- rows -------------------------------------------------------------------------------
Floor = tuple[str, str, str]  # system, label ("floor (a)"), what it is


def drain_row(res: Results, num: str, store: str, peer: str, floors: list[Floor], goal: tuple[int, int]) -> str:
    """Rows 1 and 4: a worker draining N queued jobs, its peer and floors; ``goal``: (jobs/s, us a job)."""
    key, peer_key = f"{store} drain", f"{store} drain huey"
    rate, cpu = res.med(key), res.med(key, "cpu")
    peer_text = "-"
    if peer_key in res.runs:
        peer_text = (
            f"{peer}: {js(res.med(peer_key))}, {us(res.med(peer_key, 'cpu'))}; nuvom "
            f"{times(res.ratio(key, peer_key))} its jobs/s at {times(res.ratio(key, peer_key, 'cpu', 'cpu'))} its CPU"
        )
    floor_parts, verdict = [], [f"jobs/s {check(rate, goal[0])}", f"CPU {check(cpu, goal[1], at_least=False)}"]
    for floor_key, label, what in floors:
        if floor_key in res.runs:
            f_rate, f_cpu = res.med(floor_key), res.med(floor_key, "cpu")
            ratio = res.ratio(key, floor_key)
            floor_parts.append(f"{label}, {what}: {js(f_rate)}, {us(f_cpu)}; nuvom {of(ratio)} of it")
            verdict += [beyond_rate(goal[0], f_rate, label), beyond_cpu(goal[1], f_cpu, label)]
    return line(
        num,
        f"{store_name(store)} drain: {res.args.jobs:,} queued, one worker process",
        f"{js(rate)}, {us(cpu)} CPU a job",
        peer_text,
        "; ".join(floor_parts) or "-",
        f">= {goal[0]:,} jobs/s, <= {goal[1]} us CPU a job",
        verdict,
    )


def loop_row(
    res: Results, num: str, measure: str, key: str, mode: str, peers: list[tuple[str, str, float]], floors: list[Floor]
) -> str:
    """A producer loop (``mode`` of ``key``) against peers (system, name, goal as a multiple of
    its jobs/s; the name's first word names it in the goal) and floors of jobs/s; a goal
    is checked against the lowest floor measured."""
    rate = res.med(key, mode)
    measured = [f for f in floors if f[0] in res.runs]
    lowest = min(measured, key=lambda f: res.med(f[0]), default=None)
    peer_parts, goals, verdict = [], [], []
    for peer_key, name, goal in peers:
        short = name.split(" ")[0]
        goals.append(f">= {goal:g}x {short}")
        if peer_key in res.runs:
            ratio = res.ratio(key, peer_key, mode, mode)
            peer_parts.append(f"{name}: {js(res.med(peer_key, mode))}; nuvom {times(ratio)}")
            verdict.append(f"{short} {check(ratio, goal)}")
            if lowest is not None:
                verdict.append(beyond_rate(goal * res.med(peer_key, mode), res.med(lowest[0]), lowest[1]))
    floor_text = "; ".join(
        f"{label}, {what}: {js(res.med(f_key))}; nuvom {of(res.ratio(key, f_key, mode))} of it"
        for f_key, label, what in measured
    )
    return line(num, measure, js(rate), "; ".join(peer_parts) or "-", floor_text or "-", "; ".join(goals), verdict)


def fraction_row(
    res: Results,
    num: str,
    measure: str,
    key: str,
    mode: str,
    floor: Floor,
    goal: float,
    unit: str = " of",
    bound: Floor | None = None,
) -> str:
    """A figure whose goal is a fraction of a floor's jobs/s (rows 3 and 7); ``unit``:
    how the goal reads; ``bound``: another floor no figure of this row can pass
    (row 3: the jobs a ``.map()`` queued are drained by one worker, which floor (c) bounds)."""
    frac = res.ratio(key, floor[0], mode)
    floor_text = "-"
    verdict = [check(frac, goal)]
    if floor[0] in res.runs:
        floor_text = f"{floor[1]}, {floor[2]}: {js(res.med(floor[0]))}; nuvom {of(frac)} of it"
        if bound is not None and bound[0] in res.runs:
            floor_text += f"; {bound[1]}, {bound[2]}: {js(res.med(bound[0]))}"
            verdict.append(beyond_rate(goal * res.med(floor[0]), res.med(bound[0]), bound[1]))
    return line(num, measure, js(res.med(key, mode)), "-", floor_text, f">= {goal:g}{unit} {floor[1]}", verdict)


def two_workers_row(res: Results) -> str:
    key = "sqlite drain x2"
    ratio = res.ratio(key, "sqlite drain")
    nuvom = f"{js(res.med(key))}, {us(res.med(key, 'cpu'))} CPU a job; {times(ratio)} one process (row 1)"
    measure = f"SQLite drain: {res.args.jobs:,} queued, two worker processes on one file"
    return line("8", measure, nuvom, "-", "-", ">= 1.3x one process", [check(ratio, 1.3)])


def rss_row(res: Results, store: str) -> str:
    f = res.runs.get(f"rss {store}", {}).get(0)
    where = "this process (worker and producer)" if store == "memory" else "the worker process"
    measure = f"RSS of {where}, {res.args.rss_jobs:,} jobs, {store_name(store)}"
    goal = f"flat: within {GOAL_RSS_MB:g} MB after warm-up"
    if f is None:
        return line("9", measure, "-", "-", "-", goal, ["not measured"])

    def mb(x: float) -> str:
        return f"{x / 1e6:,.0f} MB"

    nuvom = f"start {mb(f['rss_start'])}, warm {mb(f['rss_warm'])}, peak {mb(f['rss_peak'])}, end {mb(f['rss_end'])}"
    growth = f["rss_growth"] / 1e6
    verdict = [f"{check(growth, GOAL_RSS_MB, at_least=False)} (+{growth:.1f} MB after warm-up)"]
    if "held" in f:
        verdict.append(f"the memory result store held {f['held']:,.0f} records at the end")
    return line("9", measure, nuvom, "-", "-", goal, verdict)


def store_name(store: str) -> str:
    return {"sqlite": "SQLite", "redis": "Redis"}.get(store, store)


def render(res: Results) -> list[str]:
    """The table's lines, one or more per selected row."""
    n, rq = res.args.jobs, res.args.rq_jobs
    a: Floor = ("sqlite floor a", "floor (a)", "256 a transaction")
    b: Floor = ("sqlite floor b", "floor (b)", "4 a transaction, start-marked")
    c: Floor = ("sqlite floor c", "floor (c)", "(b) by 4 threads, each job waiting for its commit")
    executor: Floor = ("executor", "the executor", "`ThreadPoolExecutor(4)` submit + result")
    rows: dict[int, Callable[[], list[str]]] = {
        1: lambda: [drain_row(res, "1", "sqlite", "tuned huey consumer", [a, b, c], (15_000, 50))],
        2: lambda: [
            loop_row(
                res,
                "2",
                f"SQLite `.delay()` loop of {n:,}, then `get()` of each",
                "sqlite e2e",
                "delay",
                [("sqlite e2e huey", "SqliteHuey (tuned) call + get", 3)],
                [
                    ("sqlite insert floor", "the producer's floor", "one committed INSERT a call"),
                    ("sqlite e2e floor", "the e2e floor", "that producer beside floor (c), at once"),
                ],
            )
        ],
        3: lambda: [
            fraction_row(res, "3", f"SQLite `.map()` of {n:,}, then `get()`", "sqlite e2e", "map", a, 0.5, bound=c)
        ],
        4: lambda: [
            drain_row(
                res,
                "4",
                "redis",
                "RedisHuey consumer",
                [
                    ("redis drain floor", "floor (a)", "bare redis-py, 64 a round trip"),
                    ("redis floor b", "floor (b)", "4 a script call, start-marked"),
                    ("redis floor c", "floor (c)", "(b) by 4 threads, each job waiting for its call"),
                ],
                (10_000, 60),
            )
        ],
        5: lambda: [
            loop_row(
                res,
                "5",
                f"Redis `.delay()` loop of {n:,}, then `get()`",
                "redis e2e",
                "delay",
                [("redis e2e huey", "RedisHuey task() loop", 2), ("redis e2e rq", f"RQ enqueue() loop of {rq:,}", 15)],
                [
                    ("redis lpush floor", "the producer's floor", "one LPUSH round trip a call"),
                    ("redis e2e floor", "the e2e floor", "that producer beside floor (c), at once"),
                ],
            ),
            loop_row(
                res,
                "5",
                f"Redis `.map()` of {n:,}, then `get()`",
                "redis e2e",
                "map",
                [("redis e2e huey", "RedisHuey task.map()", 4), ("redis e2e rq", f"RQ enqueue_many() of {rq:,}", 15)],
                [],
            ),
        ],
        6: lambda: [
            loop_row(
                res,
                "6",
                f"file `.delay()` loop of {n:,}, then `get()`",
                "file e2e",
                "delay",
                [("file e2e huey", "FileHuey call + get", 3)],
                [("file floor", "the floor", "create + write + close + rename a file")],
            )
        ],
        7: lambda: [
            fraction_row(res, "7", f"memory `.delay()` + `get()` of {n:,}", "memory delay", "rate", executor, 0.9, "x"),
            fraction_row(res, "7", f"memory `.map()` + `get()` of {n:,}", "memory map", "rate", executor, 1.0, "x"),
        ],
        8: lambda: [two_workers_row(res)],
        9: lambda: [rss_row(res, store) for store in ("memory", "file", "sqlite", "redis")],
    }
    return HEAD + [text for num in sorted(res.rows) for text in rows[num]()]
