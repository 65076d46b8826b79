#!/usr/bin/env python3
"""Request and connection costs through ringlb, with wrk and the demo backend.

ringlb (one worker) on CPU 0; wrk and the demo backend on CPU 1. Two loads:
keep-alive requests, and one new connection per request (Connection: close).
Prints requests/s, latency and ringlb CPU microseconds per request, direct
and through ringlb.

    bench/conn.py [--seconds 10] [--connections 50]
"""
import argparse, os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, cpu_seconds, ensure, start_ringlb, stop, workdir  # noqa: E402

LUA = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d p50_us=%d p99_us=%d\\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(port, seconds, connections, close, script):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
           f"http://127.0.0.1:{port}/api/v1/todos"]
    if close:
        cmd[6:6] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"RESULT requests=(\d+) errors=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    return {k: int(v) for k, v in zip(["requests", "errors", "p50_us", "p99_us"], m.groups())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    ensure(["wrk"], build_backend=True)
    work = workdir("ringlb-conn-")
    script = f"{work}/report.lua"
    with open(script, "w") as f:
        f.write(LUA)
    backend_port = 26400
    backend = subprocess.Popen(["taskset", "-c", "1", f"{ROOT}/target/release/demo-backend", "--port", str(backend_port), "--name", "bench"], stderr=subprocess.DEVNULL)
    lb, lb_port = start_ringlb(work, [f"127.0.0.1:{backend_port}"])
    rows = []
    try:
        time.sleep(0.3)
        scenarios = [("keep-alive", False), ("connection: close", True)]
        for i, (name, close) in enumerate(scenarios):
            print(f"[{2 * i + 1}/4] {name}, direct", file=sys.stderr)
            r = wrk(backend_port, args.seconds, args.connections, close, script)
            rows.append({"load": name, "path": "direct", **r})
            print(f"[{2 * i + 2}/4] {name}, ringlb", file=sys.stderr)
            before = cpu_seconds(lb.pid)
            r = wrk(lb_port, args.seconds, args.connections, close, script)
            cpu = cpu_seconds(lb.pid) - before
            rows.append({"load": name, "path": "ringlb", **r, "cpu_us_per_request": 1e6 * cpu / max(r["requests"], 1)})
    finally:
        stop(lb)
        backend.terminate()
        backend.wait()
    print("| load | path | requests/s | p50 ms | p99 ms | errors | ringlb CPU µs per request |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['cpu_us_per_request']:.1f}" if "cpu_us_per_request" in r else "-"
        print(f"| {r['load']} | {r['path']} | {r['requests'] / args.seconds:.0f} | {r['p50_us'] / 1000:.2f} | "
              f"{r['p99_us'] / 1000:.2f} | {r['errors']} | {cpu} |")


if __name__ == "__main__":
    main()
