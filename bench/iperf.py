#!/usr/bin/env python3
"""Bulk throughput through ringlb vs a direct connection, with iperf3.

ringlb runs with one worker pinned to CPU 0; iperf3 client and server share
CPU 1, in both the direct and the proxied run, so the only difference is the
proxy in the path. ringlb's CPU time is read from /proc/<pid>/stat.

    bench/iperf.py [--seconds 10] [--streams 1 4] [--runs 2]

Installs iperf3 (Debian) if missing, builds the release binary, prints a
Markdown table and writes bench/results/iperf.json. All traffic is on 127.0.0.1.
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    if shutil.which("iperf3") is None:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "iperf3")
    sh("cargo", "build", "--release", "--quiet", "--bin", "ringlb", cwd=ROOT)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def start_ringlb(target_port, workdir):
    os.makedirs(f"{workdir}/targets", exist_ok=True)
    with open(f"{workdir}/targets/t.txt", "w") as f:
        f.write(f"127.0.0.1:{target_port}\n")
    with open(f"{workdir}/ringlb.toml", "w") as f:
        f.write(
            '[runtime]\nworkers = 1\n[[listener]]\nname = "bench"\nlisten = "127.0.0.1:0"\n'
            'target_group = "t"\n[[target_group]]\nname = "t"\ntargets_file = "targets/t.txt"\n'
        )
    log = open(f"{workdir}/ringlb.log", "w+")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", f"{ROOT}/target/release/ringlb", "run", "--config", f"{workdir}/ringlb.toml"],
        stderr=log, stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        log.seek(0)
        text = log.read()
        m = re.search(r"addr=127\.0\.0\.1:(\d+)", text)
        if m and " ready " in text:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"ringlb did not start:\n{text}")


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
    ensure_tools()
    server_port = 25201
    server = subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(server_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="ringlb-bench-")
    lb, lb_port = start_ringlb(server_port, work)
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
        lb.terminate()
        lb.wait(timeout=40)
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
