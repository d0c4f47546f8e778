"""Records the garbage collector's pauses of every Python process started with this folder on PYTHONPATH.

    PYTHONPATH=results/gc_pauses:$PYTHONPATH STUDIO_GC_OUT=$OUT python3 launch.py bench ...

At exit each process writes gc-<pid>.json to STUDIO_GC_OUT: per generation the collections, their total and
longest pause in ms, and every pause of 5 ms or more with its time since the process started.
STUDIO_GC_OFF=1 also turns the collector off in those processes (what its pauses cost at most).
"""

import atexit
import gc
import json
import os
import time

_out = os.environ.get("STUDIO_GC_OUT")
if _out:
    _began = time.perf_counter()
    _started = {}
    _totals = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
    _long = []

    def _watch(phase, info):
        now = time.perf_counter()
        if phase == "start":
            _started["at"] = now
            return
        ms = (now - _started.pop("at", now)) * 1000
        entry = _totals[info["generation"]]
        entry[0] += 1
        entry[1] += ms
        entry[2] = max(entry[2], ms)
        if ms >= 5:
            _long.append([round(now - _began, 2), info["generation"], round(ms, 1), info["collected"]])

    def _write():
        summary = {f"gen{g}": {"collections": n, "total_ms": round(t, 1), "longest_ms": round(m, 1)}
                   for g, (n, t, m) in _totals.items()}
        summary["pauses_over_5ms"] = _long
        summary["argv"] = " ".join(os.sys.argv)[:200]
        os.makedirs(_out, exist_ok=True)
        with open(os.path.join(_out, f"gc-{os.getpid()}.json"), "w") as f:
            json.dump(summary, f)

    gc.callbacks.append(_watch)
    if os.environ.get("STUDIO_GC_OFF") == "1":
        gc.disable()
    atexit.register(_write)
