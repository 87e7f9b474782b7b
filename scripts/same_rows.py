"""Do two results folders hold the same rows, timing aside? ``python scripts/same_rows.py BEFORE AFTER``.

Used to show that a refactor changed no behaviour: the demo is swept before and after, and every cell's
non-timing columns (status, message, numerics, audit, labels, keys) must match. Cells are matched by their
logical identity (sweep, model, backend, spec, device). Columns that describe one run rather than the cell
(ids, timestamps, latencies and everything derived from a clock, the host's load, paths under the results
folder) are left out and listed. Exit 0 when equal, 1 with the differing cells and columns otherwise.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from qtbench import load_results

KEY = ["sweep", "model", "backend", "spec_id", "device"]
#: per-run columns: identities, clocks, the host's load, and paths that name the folder a run wrote to
RUN_ONLY = re.compile(
    r"^(record_id|run_id|created_utc|cell_key|git_sha|git_dirty|qtbench_version|host_.*|load_avg.*|.*latency.*|"
    r"p\d+_ms|mean_ms|std_ms|min_ms|max_ms|cv|fps.*|throughput.*|.*_s|iterations|energy.*|power.*|mj_.*|.*_mj|"
    r"avg_.*w|.*_w|peak_.*|timing_.*|unstable.*|device_latency.*|artifact_path|artifact_bytes|cache_hit|"
    r"eval_phase|est_.*|.*_fps|meter.*|thermal.*|temp.*|cpu_.*|rss.*|backend_extra|loadavg.*|model_path)$"
)


#: timing remarks inside notes (a simulator's cycle-count spread between identical runs, written only when that
#: run's spread was wide), dropped before comparing
TIMING_IN_TEXT = re.compile(r"; [^;]*cycle counts vary \d+% \(p10–p90\)[^;]*(; treat est\. ms as approximate)?")


def same(a: object, b: object) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return TIMING_IN_TEXT.sub("", a) == TIMING_IN_TEXT.sub("", b)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args()
    before, after = load_results(args.before), load_results(args.after)
    cols = [c for c in before.columns if c in after.columns and not RUN_ONLY.match(c) and c not in KEY]
    skipped = sorted(c for c in before.columns if RUN_ONLY.match(c))
    b, a = before.set_index(KEY), after.set_index(KEY)
    only = sorted(set(b.index) ^ set(a.index))
    diffs: list[str] = []
    for key in sorted(set(b.index) & set(a.index)):
        rb, ra = b.loc[key], a.loc[key]
        bad = [c for c in cols if not same(rb[c], ra[c])]
        if bad:
            diffs.append(f"{' × '.join(map(str, key[1:4]))}: " + ", ".join(f"{c} {rb[c]!r} → {ra[c]!r}" for c in bad))
    print(f"{len(b)} / {len(a)} rows; {len(cols)} columns compared; run-only columns left out: {', '.join(skipped)}")
    for k in only:
        print(f"only on one side: {k}")
    for d in diffs:
        print(d)
    print("same" if not (diffs or only) else f"{len(diffs)} cell(s) differ, {len(only)} unmatched")
    return 0 if not (diffs or only) else 1


if __name__ == "__main__":
    sys.exit(main())
