"""How much ``vqdeploy bench``'s rows move between identical runs (issue 26 item 2).

Runs ``vqdeploy bench`` --runs times, each in a fresh process with the same arguments, and prints per row
the token ms and decoder ms of every run, with their median and max/min ratio; ``--env K=V`` sets an
environment variable for the runs (e.g. OMP_WAIT_POLICY=ACTIVE to see the torch row without the bench's
passive OpenMP waiting). The machine's load average is printed next to the numbers: on a shared machine
they are only comparable within one call.

    python tools/bench_spread.py --artifacts artifacts/demo --runs 5 -- --backends auto --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--env", action="append", default=[], help="K=V for the bench processes")
    ap.add_argument("bench_args", nargs="*", help="more `vqdeploy bench` arguments (after --)")
    args = ap.parse_args()
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"bench-{i}.json"
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, "-m", "vqdeploy", "bench", "--artifacts", str(args.artifacts),
                                   "--out", str(out), *args.bench_args], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            result = json.loads(out.read_text())
            for label, r in result["backends"].items():
                if "step" in r:
                    d = rows.setdefault(label, {"token_ms": [], "decoder_ms": []})
                    d["token_ms"].append(1e3 * r["step"])
                    d["decoder_ms"].append(1e3 * r["decoder"])
            print(f"run {i + 1}/{args.runs} done (load average before it {load:.1f})", file=sys.stderr)
    for label, d in rows.items():
        print(label)
        for key, values in d.items():
            med = statistics.median(values)
            print(f"  {key:<11} median {med:8.2f}  max/min {max(values) / min(values):5.2f}x   runs: "
                  + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
