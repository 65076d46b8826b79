#!/usr/bin/env python3
"""Bulk throughput through ringlb vs a direct connection, with iperf3.

ringlb runs with one worker pinned to CPU 0; iperf3 client and server share
CPU 1, in both the direct and the proxied run, so the only difference is the
proxy in the path. ringlb's CPU time is read from /proc/<pid>/stat.

    bench/iperf.py [--seconds 10] [--streams 1 4] [--runs 2]

Installs iperf3 (Debian) if missing, builds the release binary, prints a
Markdown table and writes bench/results/iperf.json. All traffic is on 127.0.0.1.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, cpu_seconds, ensure, start_ringlb, stop, workdir  # noqa: E402


def iperf(port, seconds, streams):
    out = subprocess.run(
        ["taskset", "-c", "1", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
         "-P", str(streams), "-J"],
        check=True, capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    end = json.loads(out)["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_received"]["bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    ensure(["iperf3"])
    server_port = 25201
    server = subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(server_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = workdir("ringlb-bench-")
    lb, lb_port = start_ringlb(work, [f"127.0.0.1:{server_port}"])
    rows = []
    try:
        time.sleep(0.3)  # let iperf3 -s bind; a failed first run would show as an error below
        total = len(args.streams) * args.runs * 2
        step = 0
        for streams in args.streams:
            for run in range(args.runs):
                step += 1
                print(f"[{step}/{total}] direct, {streams} stream(s), run {run + 1}", file=sys.stderr)
                gbps, _ = iperf(server_port, args.seconds, streams)
                rows.append({"path": "direct", "streams": streams, "run": run + 1, "gbit_s": gbps})
                step += 1
                print(f"[{step}/{total}] ringlb, {streams} stream(s), run {run + 1}", file=sys.stderr)
                before = cpu_seconds(lb.pid)
                gbps, nbytes = iperf(lb_port, args.seconds, streams)
                cpu = cpu_seconds(lb.pid) - before
                rows.append({"path": "ringlb", "streams": streams, "run": run + 1, "gbit_s": gbps,
                             "proxy_cpu_s": cpu, "proxy_cpu_s_per_gb": cpu / (nbytes / 1e9)})
    finally:
        stop(lb)
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    print("| path | streams | run | Gbit/s | vs direct | ringlb CPU-s per GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        direct = next(d["gbit_s"] for d in rows if d["path"] == "direct" and d["streams"] == r["streams"] and d["run"] == r["run"])
        ratio = f"{r['gbit_s'] / direct:.2f}x"
        cpu = f"{r['proxy_cpu_s_per_gb']:.3f}" if "proxy_cpu_s_per_gb" in r else "-"
        print(f"| {r['path']} | {r['streams']} | {r['run']} | {r['gbit_s']:.2f} | {ratio} | {cpu} |")
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    with open(f"{ROOT}/bench/results/iperf.json", "w") as f:
        json.dump({"seconds": args.seconds, "kernel": os.uname().release, "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
