"""Helpers shared by the bench scripts: build, start ringlb pinned, read /proc."""
import atexit, json, os, re, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def _exit_on_signal(signum, _frame):
    # SIGTERM or SIGHUP unwinds like Ctrl-C, so every `finally` and atexit
    # cleanup runs (children stopped, temp folders removed).
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_signal)
signal.signal(signal.SIGHUP, _exit_on_signal)


def workdir(prefix):
    """A temp folder removed when the script exits, however it exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def ensure(debian_packages, build_backend=False):
    missing = [p for p in debian_packages if shutil.which(p) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    cmd = ["cargo", "build", "--release", "--quiet", "--bin", "ringlb"]
    if build_backend:
        cmd += ["--bin", "demo-backend"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def machine_busy():
    """Seconds all CPUs together have been busy so far (/proc/stat's first
    line: user+nice+system+irq+softirq+steal). Over a run this charges a
    proxy for kernel work done for it outside its own threads (softirqs run
    in the sender's context on loopback, kworkers) that its process CPU
    misses; less the same figure for direct, it is what the proxy adds."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = t
    return (user + nice + system + irq + softirq + steal) / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_ringlb(workdir, targets, workers=1, cpus="0", extra_group="", binary=None, extra_runtime="",
                 extra_config="", extra_listener=""):
    """Starts ringlb (listening on 127.0.0.1, kernel-chosen port); returns (proc, port).
    `binary` runs another build (A/B runs); default target/release/ringlb.
    `extra_runtime` adds lines to [runtime] (e.g. 'pipe_size = "1MiB"');
    `extra_config` adds tables at the end (e.g. '[access_log]\nto = "access.log"');
    `extra_listener` adds lines to the listener (e.g. 'max_connections_per_client = 100')."""
    os.makedirs(f"{workdir}/targets", exist_ok=True)
    with open(f"{workdir}/targets/t.txt", "w") as f:
        f.write("".join(f"{t}\n" for t in targets))
    with open(f"{workdir}/ringlb.toml", "w") as f:
        f.write(
            f'[runtime]\nworkers = {workers}\n{extra_runtime}\n[admin]\nlisten = "127.0.0.1:0"\n[[listener]]\nname = "bench"\nlisten = "127.0.0.1:0"\n'
            f'target_group = "t"\n{extra_listener}\n[[target_group]]\nname = "t"\ntargets_file = "targets/t.txt"\n{extra_group}\n'
            f'{extra_config}\n'
        )
    log = open(f"{workdir}/ringlb.log", "w+")
    binary = binary or f"{ROOT}/target/release/ringlb"
    addresses = f"{workdir}/addresses.json"
    if os.path.exists(addresses):
        os.remove(addresses)
    # Builds older than --address-file (A/B runs) are read from their log.
    new = "--address-file" in subprocess.run([binary, "run", "--help"], capture_output=True, text=True).stdout
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, binary, "run", "--config", f"{workdir}/ringlb.toml"]
        + (["--address-file", addresses] if new else []),
        stderr=log, stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    text = ""
    while time.time() < deadline and proc.poll() is None:
        log.seek(0)
        text = log.read()
        if new and os.path.exists(addresses):
            with open(addresses) as f:
                return proc, int(json.load(f)["listeners"]["bench"].rsplit(":", 1)[1])
        m = re.search(r"addr=127\.0\.0\.1:(\d+)", text)
        if not new and m and " ready " in text:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"ringlb did not start:\n{text}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
