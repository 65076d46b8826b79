#!/usr/bin/env python3
"""How far is ringlb from the floor of a bare io_uring completion loop?

Measures examples/uring_loop.rs, a prototype proxy on its own completion loop
(no tokio: SINGLE_ISSUER | DEFER_TASKRUN, multishot accept, recv, send,
connect, shutdown and close all on the ring), beside ringlb and nginx stream.
As in bench/pair.py, the three run at the same time, each with one thread
pinned to CPU 0 behind one nginx backend on CPU 1, and in every round each gets
its own wrk -c50 (CPU 1) for the same seconds, the start order rotating: what
slows the machine slows all three, so the per-round ratios to nginx hold still.
The prototype has none of ringlb's timeouts, retries, health, limits or
metrics, so its figure is a floor for an own loop, not a promise.

    bench/loop_probe.py [--rounds 5] [--seconds 5] [--only close,keepalive]

Prints each round, then the median CPU µs per connection (close) and per
request (keepalive) and the median per-round ratio to nginx with its range;
then each one's CPU split into user space and kernel (`/proc/PID/stat`; the
kernel part includes the loopback TCP receive work run in the proxy's
context), with ringlb's kernel time alone against nginx's whole: the figure
ringlb would reach if its own code cost nothing;
writes bench/results/loop_probe.json. All traffic is on 127.0.0.1.
"""
import argparse, json, os, resource, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, ensure, machine_busy, stop, workdir  # noqa: E402
import compare  # noqa: E402
import pair  # noqa: E402

KINDS = ["uring_loop", "ringlb", "nginx"]


class Loop:
    """The prototype in front of `backend`, pinned to CPU 0; with `syscalls`,
    receiving and sending by system call as ringlb does (UL_SYSCALLS=1)."""

    def __init__(self, backend, syscalls=False):
        self.kind = "uring_loop_sys" if syscalls else "uring_loop"
        self.port = compare.free_port()
        binary = f"{ROOT}/target/release/examples/uring_loop"
        env = dict(os.environ, UL_SYSCALLS="1" if syscalls else "0")
        self.proc = subprocess.Popen(["taskset", "-c", "0", binary, f"127.0.0.1:{self.port}",
                                      f"127.0.0.1:{backend}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        compare.wait_port(self.port)

    def cpu(self):
        return compare.cpu(self.proc.pid)

    def cpu_times(self):
        return compare.cpu_times(self.proc.pid)

    def close(self):
        stop(self.proc)


def unit(scenario):
    return "CPU µs per connection" if scenario == "close" else "CPU µs per request"


def ratio(rows, a, b):
    """Median and range of the per-round ratio a / b."""
    rs = [r[a] / r[b] for r in rows]
    return f"{statistics.median(rs):.3f}x ({min(rs):.3f}-{max(rs):.3f})"


def floor_table(rows, scenarios):
    """Each proxy's CPU split into user space and kernel, and what ringlb would
    cost against nginx if its own code cost nothing (its kernel time alone)."""
    print("\n| scenario | figure | uring_loop | ringlb | nginx | ringlb kernel alone / nginx |")
    print("|---|---|---|---|---|---|")
    for sc in scenarios:
        mine = [r for r in rows if r["scenario"] == sc]
        for part in ("user", "kernel"):
            med = {k: statistics.median(r[f"{k}_user"] if part == "user" else r[k] - r[f"{k}_user"] for r in mine)
                   for k in KINDS}
            alone = "" if part == "user" else ratio([{**r, "kernel": r["ringlb"] - r["ringlb_user"]} for r in mine],
                                                      "kernel", "nginx")
            print(f"| {sc} | {unit(sc)}, {part} | {med['uring_loop']:.1f} | {med['ringlb']:.1f} | "
                  f"{med['nginx']:.1f} | {alone} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", default="close,keepalive")
    ap.add_argument("--syscalls", action="store_true",
                    help="also run the prototype receiving and sending by system call, as ringlb does")
    args = ap.parse_args()
    kinds = KINDS + ["uring_loop_sys"] if args.syscalls else KINDS
    if not 1 <= args.rounds <= 30 or not 1 <= args.seconds <= 60:
        sys.exit("--rounds must be 1-30 and --seconds 1-60")
    scenarios = args.only.split(",")
    if set(scenarios) - {"close", "keepalive"}:
        sys.exit("--only takes close,keepalive")
    ensure(["wrk", "nginx"])
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "libnginx-mod-stream"], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "uring_loop"], cwd=ROOT, check=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = workdir("ringlb-loop-probe-")
    lua = f"{work}/report.lua"
    with open(lua, "w") as f:
        f.write(compare.WRK_LUA)
    proxies, rows = {}, []
    srv, backend = compare.http_backend(work)
    try:
        proxies["uring_loop"] = Loop(backend)
        if args.syscalls:
            proxies["uring_loop_sys"] = Loop(backend, syscalls=True)
        for kind in ("ringlb", "nginx"):
            proxies[kind] = compare.Proxy(kind, backend, f"{work}/{kind}" if kind == "ringlb" else work)
        for rnd in range(args.rounds):
            for sc in scenarios:
                order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
                out = {}
                threads = [threading.Thread(target=pair.load, args=(sc, proxies[k], args.seconds, lua, out))
                           for k in order]
                m0 = machine_busy()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=args.seconds + 60)
                machine = machine_busy() - m0
                if len(out) != len(kinds):
                    sys.exit(f"round {rnd + 1} {sc}: a load generator failed")
                us = {k: 1e6 * out[k][1] / out[k][0] for k in kinds}
                user = {f"{k}_user": 1e6 * out[k][2] / out[k][0] for k in kinds}
                # The whole machine, all of them together (it cannot be split
                # between proxies loaded at once), and the proxies' own share.
                ops = sum(out[k][0] for k in kinds)
                share = sum(out[k][1] for k in kinds) / machine
                rows.append({"round": rnd + 1, "scenario": sc, **us, **user, "machine_all": 1e6 * machine / ops,
                             "own_share": share})
                print(f"round {rnd + 1} {sc:9} " + "  ".join(f"{k} {us[k]:.1f}" for k in kinds) +
                      f"  (µs per {'connection' if sc == 'close' else 'request'}; whole machine, all together "
                      f"{1e6 * machine / ops:.1f}, {100 * share:.0f}% of it the proxies' own)", flush=True)
                time.sleep(1)
    finally:
        for p in proxies.values():
            p.close()
        srv.terminate()
        srv.wait()
    print("\n| scenario | figure | uring_loop | ringlb | nginx | uring_loop / nginx | ringlb / nginx | "
          "uring_loop / ringlb |")
    print("|---|---|---|---|---|---|---|---|")
    for sc in scenarios:
        mine = [r for r in rows if r["scenario"] == sc]
        med = {k: statistics.median(r[k] for r in mine) for k in kinds}
        print(f"| {sc} | {unit(sc)} | {med['uring_loop']:.1f} | {med['ringlb']:.1f} | {med['nginx']:.1f} | "
              f"{ratio(mine, 'uring_loop', 'nginx')} | {ratio(mine, 'ringlb', 'nginx')} | "
              f"{ratio(mine, 'uring_loop', 'ringlb')} |")
    for sc in scenarios:
        mine = [r for r in rows if r["scenario"] == sc]
        print(f"\n{sc}: whole machine CPU µs per unit, all proxies together: "
              f"{statistics.median(r['machine_all'] for r in mine):.1f}; the proxies' own share of it: "
              f"{100 * statistics.median(r['own_share'] for r in mine):.0f}% (bench/run.sh gives each proxy's "
              f"whole-machine figure, one at a time)")
    floor_table(rows, scenarios)
    if args.syscalls:
        print("\n| scenario | figure | uring_loop | uring_loop_sys | uring_loop / uring_loop_sys |")
        print("|---|---|---|---|---|")
        for sc in scenarios:
            mine = [r for r in rows if r["scenario"] == sc]
            med = {k: statistics.median(r[k] for r in mine) for k in kinds}
            print(f"| {sc} | {unit(sc)} | {med['uring_loop']:.1f} | {med['uring_loop_sys']:.1f} | "
                  f"{ratio(mine, 'uring_loop', 'uring_loop_sys')} |")
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    with open(f"{ROOT}/bench/results/loop_probe.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
