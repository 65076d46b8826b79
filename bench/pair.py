#!/usr/bin/env python3
"""Paired A/B of two ringlb builds (or two [runtime] settings), loaded at the same time.

On a shared VM a proxy's CPU per connection moves by up to 20% from one round
to the next (bench/RESULTS.md), which hides any change smaller than that in
compare.py's rotated rounds.
Here both builds run side by side, each with one worker pinned to CPU 0, and in
every round each gets its own load generator (pinned to CPU 1, like the
backend) for the same seconds: whatever slows the machine slows both, and the
per-round ratio new/old holds within about 1% per connection or request and
3% per GB (an A/A run, the same binary twice, shows this floor).

    bench/pair.py --old OLD_BINARY [--new target/release/ringlb]
                  [--only close,keepalive,bulk] [--rounds 6] [--seconds 4]
                  [--runtime TOML] [--old-runtime TOML] [--extra TOML] [--old-extra TOML]
                  [--listener TOML] [--old-listener TOML]

Scenarios: close (wrk -c50 with Connection: close, CPU µs per connection),
keepalive (wrk -c50, CPU µs per request), bulk (one iperf3 stream each, to its
own iperf3 server; CPU-s per GB). Prints each round and the median ratio with
its range, and writes bench/results/pair.json. Beside them, the whole machine's
CPU per unit (all CPUs, /proc/stat) for the two builds together, and the share
of it that is the two builds' own: the machine's CPU cannot be split between
two builds loaded at once, so the A/B ratio is of their own CPU; bench/run.sh,
which runs one proxy at a time, gives each its whole-machine figure. All traffic is on 127.0.0.1.
"""
import argparse, json, os, resource, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, ensure, machine_busy, workdir  # noqa: E402
import compare  # noqa: E402

UNITS = {"close": "CPU µs per connection", "keepalive": "CPU µs per request", "bulk": "CPU-s per GB"}


def load(scenario, proxy, seconds, lua, out):
    """Runs one load generator against `proxy`; stores (operations, CPU
    seconds, of which user-space seconds)."""
    user0, kernel0 = proxy.cpu_times()
    if scenario == "bulk":
        _, nbytes = compare.iperf(proxy.port, seconds, 1)
        ops = nbytes / 1e9
    else:
        ops, errors, _, _ = compare.wrk(proxy.port, seconds, scenario == "close", lua)
        if errors:
            raise RuntimeError(f"{proxy.kind}: {errors} wrk errors")
    user, kernel = proxy.cpu_times()
    out[proxy.kind.removeprefix("ringlb-")] = (ops, user + kernel - user0 - kernel0, user - user0)


def ringlb(which, backend, work, binaries, runtimes, extras, listeners):
    """The `which` ("new" or "old") build in front of `backend`, pinned to CPU 0."""
    kind = f"ringlb-{which}"
    return compare.Proxy(kind, backend, work, binaries={kind: binaries[which]}, runtimes={kind: runtimes[which]},
                         extras={kind: extras[which]}, listeners={kind: listeners[which]})


def cost(scenario, ops, seconds):
    return seconds / ops if scenario == "bulk" else seconds / ops * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, metavar="OLD_BINARY")
    ap.add_argument("--new", default=f"{ROOT}/target/release/ringlb", metavar="NEW_BINARY")
    ap.add_argument("--only", default="close,keepalive")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--runtime", default="", metavar="TOML", help="lines for the new build's [runtime]")
    ap.add_argument("--old-runtime", default="", metavar="TOML", help="the same for the old build")
    ap.add_argument("--extra", default="", metavar="TOML",
                    help="tables for the new build's config, e.g. '[access_log]\\nto = \"access.log\"'")
    ap.add_argument("--old-extra", default="", metavar="TOML", help="the same for the old build")
    ap.add_argument("--listener", default="", metavar="TOML",
                    help="lines for the new build's listener, e.g. 'max_connections_per_client = 1000'")
    ap.add_argument("--old-listener", default="", metavar="TOML", help="the same for the old build")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 30 or not 1 <= args.seconds <= 60:
        sys.exit("--rounds must be 1-30 and --seconds 1-60")
    wanted = args.only.split(",")
    if set(wanted) - set(UNITS):
        sys.exit(f"--only takes {','.join(UNITS)}")
    ensure(["iperf3", "wrk", "nginx"])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binaries = {"new": os.path.abspath(args.new), "old": os.path.abspath(args.old)}
    runtimes = {"new": args.runtime.replace("\\n", "\n"), "old": args.old_runtime.replace("\\n", "\n")}
    extras = {"new": args.extra.replace("\\n", "\n"), "old": args.old_extra.replace("\\n", "\n")}
    listeners = {"new": args.listener.replace("\\n", "\n"), "old": args.old_listener.replace("\\n", "\n")}

    work = workdir("ringlb-pair-")
    lua = f"{work}/report.lua"
    with open(lua, "w") as f:
        f.write(compare.WRK_LUA)
    children, proxies = [], {}
    try:
        backend, port = compare.http_backend(work)
        children.append(backend)
        for kind in ("new", "old"):
            proxies[("http", kind)] = ringlb(kind, port, f"{work}/{kind}", binaries, runtimes, extras, listeners)
        if "bulk" in wanted:
            for i, kind in enumerate(("new", "old")):
                iperf_port = compare.IPERF_PORT + i
                children.append(subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-B", "127.0.0.1", "-p",
                                                  str(iperf_port)], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))
                compare.wait_port(iperf_port)
                proxies[("bulk", kind)] = ringlb(kind, iperf_port, f"{work}/bulk-{kind}", binaries, runtimes, extras,
                                                 listeners)
        rows = []
        for rnd in range(args.rounds):
            for sc in wanted:
                family = "bulk" if sc == "bulk" else "http"
                out = {}
                # Who starts first alternates: a head start of a millisecond must not favour one.
                order = ("new", "old") if rnd % 2 == 0 else ("old", "new")
                threads = [threading.Thread(target=load, args=(sc, proxies[(family, k)], args.seconds, lua, out))
                           for k in order]
                m0 = machine_busy()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=args.seconds + 60)
                machine = machine_busy() - m0
                if len(out) != 2:
                    sys.exit(f"round {rnd + 1} {sc}: a load generator failed")
                new, old = (cost(sc, *out[k][:2]) for k in ("new", "old"))
                # The whole machine's CPU cannot be split between two builds
                # loaded at once: it is shown for both together, with the
                # share the two builds' own CPU is of it.
                ops = out["new"][0] + out["old"][0]
                own = out["new"][1] + out["old"][1]
                rows.append({"round": rnd + 1, "scenario": sc, "new": new, "old": old, "ratio": new / old,
                             "new_ops": out["new"][0], "old_ops": out["old"][0],
                             "machine_both": cost(sc, ops, machine), "own_share": own / machine})
                print(f"round {rnd + 1} {sc:9} {UNITS[sc]}: new {new:.4g}  old {old:.4g}  ratio {new / old:.3f}  "
                      f"(whole machine, both: {cost(sc, ops, machine):.4g}, {100 * own / machine:.0f}% of it theirs)",
                      flush=True)
                time.sleep(1)
    finally:
        for p in proxies.values():
            p.close()
        for c in children:
            c.terminate()
            c.wait(timeout=10)
    print(f"\nnew = {binaries['new']} {runtimes['new']!r} {extras['new']!r} {listeners['new']!r}\n"
          f"old = {binaries['old']} {runtimes['old']!r} {extras['old']!r} {listeners['old']!r}")
    print("| scenario | figure | new (median) | old (median) | new / old, median | range | "
          "whole machine, both builds together | the builds' own share of it |")
    print("|---|---|---|---|---|---|---|---|")
    for sc in wanted:
        mine = [r for r in rows if r["scenario"] == sc]
        ratios = [r["ratio"] for r in mine]
        print(f"| {sc} | {UNITS[sc]} | {statistics.median(r['new'] for r in mine):.4g} | "
              f"{statistics.median(r['old'] for r in mine):.4g} | {statistics.median(ratios):.3f}x | "
              f"{min(ratios):.3f}-{max(ratios):.3f} | {statistics.median(r['machine_both'] for r in mine):.4g} | "
              f"{100 * statistics.median(r['own_share'] for r in mine):.0f}% |")
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    with open(f"{ROOT}/bench/results/pair.json", "w") as f:
        json.dump({"new": binaries["new"], "old": binaries["old"], "runtimes": runtimes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
