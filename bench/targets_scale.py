#!/usr/bin/env python3
"""Large target sets: does the control plane keep up, and do the admin
endpoint and signals keep answering?

Two runs, each against a fresh ringlb (one worker on CPU 0):

1. `flip`: N targets (default 10,000), every one probed on one shared
   health port; the port is closed (every target goes unhealthy) and opened
   again (every one comes back), ROUNDS times.
2. `churn`: M targets (default 100,000) written to the targets file at once,
   probed until healthy, then all removed at once (deregistration_delay 0s).

Throughout, a client asks /healthz every 20 ms and a SIGHUP's answer time is
measured by the "config reloaded" line; the script prints how long each step
took, the control thread's CPU, ringlb's RSS and the /healthz latencies.
Targets are addresses on 127.0.0.1 and 127.0.0.2 (ports 10000-59999); the
health probes go to those addresses' shared health port. Nothing leaves the
machine.

    bench/targets_scale.py [--flip 10000] [--churn 100000] [--rounds 2]
"""
import argparse, json, os, resource, socket, subprocess, sys, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TICK, ensure, rss_kib, stop, workdir  # noqa: E402


class HealthPort:
    """A listening socket on 127.0.0.1 and 127.0.0.2 at one port that
    accepts and closes every connection (a passing TCP probe), until closed:
    then probes are refused."""

    def __init__(self, port=0):
        self.socks = []
        self.port = port
        self.open()

    def open(self):
        for ip in ("127.0.0.1", "127.0.0.2"):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, self.port))
            self.port = s.getsockname()[1]
            s.listen(4096)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        while True:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                return

    def close(self):
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.socks = []


class Prober(threading.Thread):
    """Asks /healthz every 20 ms (1 s timeout); keeps every latency."""

    def __init__(self, admin):
        super().__init__(daemon=True)
        self.admin, self.times, self.failed, self.running = admin, [], 0, True

    def run(self):
        while self.running:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://{self.admin}/healthz", timeout=1) as r:
                    r.read()
                self.times.append(time.monotonic() - t)
            except OSError:
                self.failed += 1
            time.sleep(0.02)

    def report(self, what):
        ts = sorted(self.times)
        if not ts:
            return f"| {what} | 0 | {self.failed} | - | - | - |"
        pct = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))] * 1000  # noqa: E731
        return f"| {what} | {len(ts)} | {self.failed} | {pct(0.5):.1f} | {pct(0.99):.1f} | {ts[-1] * 1000:.1f} |"


def addresses(n):
    """n target addresses, 127.0.0.1:10000 upward, then 127.0.0.2."""
    out = []
    for i in range(n):
        ip = "127.0.0.1" if i < 50_000 else "127.0.0.2"
        out.append(f"{ip}:{10_000 + i % 50_000}")
    return out


def control_cpu(pid):
    """CPU seconds of ringlb's main thread: the control plane."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(work, targets, health_port, interval):
    with open(f"{work}/t.txt", "w") as f:
        f.write("".join(f"{t}\n" for t in targets))
    with open(f"{work}/ringlb.toml", "w") as f:
        f.write(
            '[runtime]\nworkers = 1\n[admin]\nlisten = "127.0.0.1:0"\n'
            '[[listener]]\nname = "web"\nlisten = "127.0.0.1:0"\ntarget_group = "web"\n'
            '[[target_group]]\nname = "web"\ntargets_file = "t.txt"\nderegistration_delay = "0s"\n'
            f'[target_group.health_check]\nport = {health_port}\ninterval = "{interval}"\ntimeout = "900ms"\n'
            "healthy_threshold = 1\nunhealthy_threshold = 1\n"
        )
    log = open(f"{work}/ringlb.log", "w+")
    addr_file = f"{work}/addresses.json"
    proc = subprocess.Popen(
        ["taskset", "-c", "0", f"{ROOT}/target/release/ringlb", "run", "--config", f"{work}/ringlb.toml",
         "--address-file", addr_file, "--log-level", "info"],
        stderr=log, stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not os.path.exists(addr_file):
        if time.time() > deadline or proc.poll() is not None:
            log.seek(0)
            sys.exit(f"ringlb did not start:\n{log.read()[-3000:]}")
        time.sleep(0.05)
    with open(addr_file) as f:
        return proc, json.load(f)["admin"]


class Log:
    """Counts lines of ringlb's log holding a phrase, reading only what is
    new each time (asking /targets for 100,000 targets would itself load the
    control plane this measures)."""

    def __init__(self, path):
        self.f, self.rest, self.counts = open(path), "", {}

    def count(self, phrase):
        self.rest += self.f.read()
        *lines, self.rest = self.rest.split("\n")
        for line in lines:
            for k in ("to=healthy", "to=unhealthy", "drain finished", "config reloaded", "targets reloaded"):
                if k in line:
                    self.counts[k] = self.counts.get(k, 0) + 1
        return self.counts.get(phrase, 0)


def wait(what, cond, limit):
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > limit:
            sys.exit(f"timed out after {limit} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - t


def sighup_answer(proc, log):
    """Seconds from SIGHUP to its "config reloaded" line."""
    before = log.count("config reloaded")
    t = time.monotonic()
    proc.send_signal(1)
    while log.count("config reloaded") == before:
        if time.monotonic() - t > 30:
            return float("inf")
        time.sleep(0.005)
    return time.monotonic() - t


def flip(n, rounds):
    work = workdir("ringlb-flip-")
    port = HealthPort()
    lb, admin = start(work, addresses(n), port.port, "2s")
    log = Log(f"{work}/ringlb.log")
    rows = []
    try:
        p = Prober(admin)
        p.start()
        took = wait(f"{n} healthy", lambda: log.count("to=healthy") >= n, 300)
        rows.append(f"| {n} targets come up | {took:.1f} s |")
        for r in range(rounds):
            cpu = control_cpu(lb.pid)
            down, up = log.count("to=unhealthy"), log.count("to=healthy")
            port.close()
            took = wait("all unhealthy", lambda: log.count("to=unhealthy") >= down + n, 300)
            hup = sighup_answer(lb, log)
            port.open()
            took2 = wait("all healthy", lambda: log.count("to=healthy") >= up + n, 300)
            rows.append(f"| round {r + 1}: all {n} down / all up | {took:.1f} s / {took2:.1f} s |")
            rows.append(f"| round {r + 1}: control-thread CPU for both flips | {control_cpu(lb.pid) - cpu:.2f} s |")
            rows.append(f"| round {r + 1}: SIGHUP answered, all down | {hup * 1000:.0f} ms |")
        p.running = False
        p.join()
        rows.append(f"| ringlb RSS with {n} targets | {rss_kib(lb.pid) / 1024:.1f} MiB |")
        return rows, p.report(f"{n} targets flipping")
    finally:
        stop(lb)
        port.close()


def churn(m):
    work = workdir("ringlb-churn-")
    port = HealthPort()
    lb, admin = start(work, [], port.port, "10s")
    log = Log(f"{work}/ringlb.log")
    rows = []
    try:
        p = Prober(admin)
        p.start()
        cpu = control_cpu(lb.pid)
        tmp = f"{work}/t.txt.new"
        with open(tmp, "w") as f:
            f.write("".join(f"{t}\n" for t in addresses(m)))
        os.rename(tmp, f"{work}/t.txt")
        took = wait(f"{m} healthy", lambda: log.count("to=healthy") >= m, 900)
        rows.append(f"| {m} targets added, all healthy | {took:.1f} s |")
        rows.append(f"| control-thread CPU, adding and first probes | {control_cpu(lb.pid) - cpu:.1f} s |")
        rows.append(f"| ringlb RSS with {m} targets | {rss_kib(lb.pid) / 1024:.1f} MiB |")
        hup = sighup_answer(lb, log)
        rows.append(f"| SIGHUP answered with {m} targets | {hup * 1000:.0f} ms |")
        cpu = control_cpu(lb.pid)
        with open(tmp, "w") as f:
            f.write("# all gone\n")
        os.rename(tmp, f"{work}/t.txt")
        took = wait("all removed", lambda: log.count("drain finished") >= m, 600)
        rows.append(f"| {m} targets removed (deregistration_delay 0s), all drained | {took:.1f} s |")
        rows.append(f"| control-thread CPU, removing | {control_cpu(lb.pid) - cpu:.1f} s |")
        p.running = False
        p.join()
        return rows, p.report(f"{m} targets added and removed")
    finally:
        stop(lb)
        port.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flip", type=int, default=10_000)
    ap.add_argument("--churn", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.churn > 100_000 or args.flip > 100_000:
        sys.exit("at most 100,000 targets (two addresses of 50,000 ports)")
    ensure([])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"# Large target sets (commit {commit}; bench/targets_scale.py --flip {args.flip} --churn {args.churn} --rounds {args.rounds})\n")
    rows, flips = flip(args.flip, args.rounds) if args.flip else ([], None)
    more, churns = churn(args.churn) if args.churn else ([], None)
    print("| step | figure |\n|---|---|")
    print("\n".join(rows + more))
    print("\n| /healthz every 20 ms during | answers | failed (1 s timeout) | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    print("\n".join(r for r in (flips, churns) if r))


if __name__ == "__main__":
    main()
