#!/usr/bin/env python3
"""Soak: ringlb under a client mix while everything around it changes.

For --minutes (default 10), a mix of clients runs through ringlb (2 workers)
against echo targets in this process: keep-alive request/response, one
exchange per connection with a half-close, bulk both ways, slow readers,
TCP urgent bytes, long-idle connections, and clients of a PROXY-protocol
listener. Meanwhile the targets file churns every 2 s (deregistration_delay
5 s), a target's health port closes for 2 s every 7 s (health flips), a SIGHUP
every 15 s adds or removes the PROXY-protocol listener, and once a bad
targets file is written on purpose.

Every target removed by the churn is listed again 2 s later, before its drain
(5 s) runs out, so no drain ever closes a connection here: every failed
operation counts, except on the PROXY-protocol listener while a SIGHUP removes
it (its port closes, as asked).

It prints, and asserts:
- 0 failed client operations;
- 0 corrupt bytes;
- RSS and open fds flat: the last minute's median within 5% of the second
  minute's (plus a small absolute slack: 16 fds, 1 MiB);
- no thread growth;
- no ERROR line in ringlb's log but the one caused on purpose.

    bench/soak.py [--minutes 10]

All traffic is on 127.0.0.1. Every loop is bounded by the deadline and the
script stops by itself; Ctrl-C stops it early and still cleans up.
"""
import argparse, asyncio, json, os, random, re, signal, socket, statistics, struct, subprocess, sys, time, zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, ensure, rss_kib, workdir  # noqa: E402

DRAIN = 5.0  # deregistration_delay, seconds
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class Stats:
    def __init__(self):
        self.ok = {}
        self.failed = {}
        self.listener_removed = 0
        self.corrupt = 0
        self.examples = []

    def good(self, kind):
        self.ok[kind] = self.ok.get(kind, 0) + 1

    def bad(self, kind, born, why):
        self.failed[kind] = self.failed.get(kind, 0) + 1
        example = f"{kind}: {why}"
        if len(self.examples) < 10 and example not in self.examples:
            self.examples.append(example)


STATS = Stats()


class Echo:
    """An echo target on its own loopback address. With `proxy`, every
    connection must start with a PROXY header (v1 or v2), which is checked and
    stripped. With `health_port`, a second listener on that port answers the
    health checks: `sicken()` closes it and `heal()` opens it again, so a
    health flip never touches the traffic port (and no client connection)."""

    def __init__(self, ip, proxy=False, health_port=None):
        self.ip, self.proxy = ip, proxy
        self.sock = socket.socket()
        self.sock.bind((ip, 0))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.health_port = health_port
        self.health = None
        self.tasks = set()

    def spawn(self, coro):
        # asyncio holds tasks weakly: keep each until it ends.
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def start(self):
        self.spawn(self.accept_loop(self.sock, self.serve))
        if self.health_port:
            await self.heal()

    async def heal(self):
        # A health probe is a connect: accept it and close it.
        self.health = await asyncio.start_server(lambda r, w: w.close(), self.ip, self.health_port,
                                                 reuse_address=True)

    async def sicken(self):
        self.health.close()
        await self.health.wait_closed()
        self.health = None

    def close(self):
        for t in list(self.tasks):
            t.cancel()
        self.sock.close()
        if self.health:
            self.health.close()

    async def accept_loop(self, sock, serve):
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            r, w = await asyncio.open_connection(sock=conn)
            self.spawn(serve(r, w))

    async def serve(self, r, w):
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        try:
            if self.proxy:
                first = await r.readexactly(5)
                if first == b"PROXY":
                    await r.readuntil(b"\r\n")
                else:
                    head = first + await r.readexactly(11)  # 12 signature, version, family, length
                    if head[:12] != V2_SIG:
                        STATS.corrupt += 1
                        return
                    await r.readexactly(struct.unpack("!H", head[14:16])[0])
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
            w.write_eof()
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            w.close()


async def exchange(port, payload, kind, born, timeout=10):
    """Connects, sends payload, half-closes, expects it echoed then EOF."""
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    local = w.get_extra_info("sockname")[1]
    try:
        w.write(payload)
        await w.drain()
        w.write_eof()
        got = await asyncio.wait_for(r.read(), timeout)
        if got != payload:
            if len(got) < len(payload) and payload.startswith(got):
                raise ConnectionError(f"short: {len(got)} of {len(payload)} bytes (client port {local})")
            STATS.corrupt += 1
            raise ConnectionError("corrupt echo")
    finally:
        w.close()


async def loop(deadline, kind, body):
    while time.monotonic() < deadline:
        born = time.monotonic()
        try:
            await body(born)
            STATS.good(kind)
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            STATS.bad(kind, born, repr(e))
            await asyncio.sleep(0.05)


def clients(deadline, ports):
    rnd = random.Random(7)

    async def keepalive(born):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports["plain"]), 10)
        try:
            for _ in range(20):
                msg = rnd.randbytes(rnd.randint(1, 16384))
                w.write(msg)
                await w.drain()
                got = await asyncio.wait_for(r.readexactly(len(msg)), 10)
                if got != msg:
                    STATS.corrupt += 1
                    raise ConnectionError("corrupt echo")
        finally:
            w.close()

    async def close(born):
        await exchange(ports["plain"], rnd.randbytes(2048), "close", born)

    async def bulk(born):
        await exchange(ports["plain"], rnd.randbytes(4 << 20), "bulk", born, timeout=30)

    async def slow(born):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports["plain"]), 10)
        local = w.get_extra_info("sockname")[1]
        try:
            msg = rnd.randbytes(256 << 10)
            w.write(msg)
            got = b""
            while len(got) < len(msg):
                try:
                    chunk = await asyncio.wait_for(r.read(16384), 10)
                except ConnectionError as e:
                    raise ConnectionError(f"{e!r} after {len(got)} of {len(msg)} bytes (client port {local})")
                if not chunk:
                    raise ConnectionError(f"closed early (client port {local})")
                got += chunk
                await asyncio.sleep(0.01)
            if got != msg:
                STATS.corrupt += 1
                raise ConnectionError("corrupt echo")
        finally:
            w.close()

    async def urgent(born):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports["plain"]), 10)
        try:
            w.write(b"abc")
            await w.drain()
            # asyncio's socket wrapper has no send(): send the urgent byte on a dup.
            with socket.socket(fileno=os.dup(w.get_extra_info("socket").fileno())) as dup:
                dup.send(b"!", socket.MSG_OOB)
            w.write(b"def")
            await w.drain()
            got = await asyncio.wait_for(r.readexactly(7), 10)
            if got != b"abc!def":
                STATS.corrupt += 1
                raise ConnectionError(f"urgent byte mangled: {got!r}")
        finally:
            w.close()

    async def idle(born):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports["stable"]), 10)
        try:
            for _ in range(2):
                msg = rnd.randbytes(64)
                w.write(msg)
                await w.drain()
                if await asyncio.wait_for(r.readexactly(64), 10) != msg:
                    STATS.corrupt += 1
                    raise ConnectionError("corrupt echo")
                await asyncio.sleep(min(rnd.uniform(20, 40), max(0.0, deadline - time.monotonic())))
        finally:
            w.close()

    async def proxied(born):
        port = ports.get("pp")
        if port is None:
            await asyncio.sleep(0.2)
            return
        try:
            await exchange(port, rnd.randbytes(1024), "proxy_protocol", born)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            if ports.get("pp") == port:
                raise
            # The listener was removed by a SIGHUP meanwhile: its port is
            # closed (and its accept queue reset), as asked.
            STATS.listener_removed += 1

    mix = [("keepalive", keepalive, 8), ("close", close, 4), ("bulk", bulk, 1), ("slow_reader", slow, 2),
           ("urgent", urgent, 1), ("idle", idle, 20), ("proxy_protocol", proxied, 2)]
    return [loop(deadline, kind, body) for kind, body, n in mix for _ in range(n)]


def config(with_pp, health_port):
    pp = ('[[listener]]\nname = "pp"\nlisten = "127.0.0.1:0"\ntarget_group = "pp"\nproxy_protocol = "v2"\n'
          if with_pp else "")
    health = ('[target_group.health_check]\nprotocol = "tcp"\ninterval = "500ms"\ntimeout = "300ms"\n'
              'healthy_threshold = 2\nunhealthy_threshold = 2\n')
    echo_health = health + f"port = {health_port}\n"
    return (f'[runtime]\nworkers = 2\nshutdown_timeout = "5s"\n[admin]\nlisten = "127.0.0.1:0"\n'
            f'[[listener]]\nname = "plain"\nlisten = "127.0.0.1:0"\ntarget_group = "echo"\n'
            f'[[listener]]\nname = "stable"\nlisten = "127.0.0.1:0"\ntarget_group = "stable"\n{pp}'
            f'[[target_group]]\nname = "echo"\ntargets_file = "echo.txt"\nderegistration_delay = "{int(DRAIN)}s"\n'
            f'connect_retries = 3\nidle_timeout = "30s"\n{echo_health}'
            f'[[target_group]]\nname = "stable"\ntargets_file = "stable.txt"\nidle_timeout = "120s"\n{health}'
            f'[[target_group]]\nname = "pp"\ntargets_file = "pp.txt"\n{health}')


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def sample(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        threads = int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))
    return rss_kib(pid), fds, threads


async def main_async(args, work):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    health_port = probe.getsockname()[1]  # free on 127.0.0.1; the targets use 127.0.1.x
    probe.close()
    echo = [Echo(f"127.0.1.{i + 1}", health_port=health_port) for i in range(4)]
    stable = [Echo(f"127.0.2.{i + 1}") for i in range(2)]
    pp = [Echo(f"127.0.3.{i + 1}", proxy=True) for i in range(2)]
    for e in echo + stable + pp:
        await e.start()
    targets = lambda group: "".join(f"{e.ip}:{e.port}\n" for e in group)  # noqa: E731
    write(f"{work}/echo.txt", targets(echo))
    write(f"{work}/stable.txt", targets(stable))
    write(f"{work}/pp.txt", targets(pp))
    write(f"{work}/ringlb.toml", config(True, health_port))
    log = open(f"{work}/ringlb.log", "w+")
    addresses = f"{work}/addresses.json"
    lb = subprocess.Popen([f"{ROOT}/target/release/ringlb", "run", "--config", f"{work}/ringlb.toml",
                           "--address-file", addresses],
                          stderr=log, stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": os.environ.get("SOAK_RUST_LOG", "info")})
    ports = {}

    def learn():
        # ringlb rewrites the file (atomically) once ready and after each SIGHUP.
        with open(addresses) as f:
            bound = json.load(f)["listeners"]
        ports.clear()
        ports.update({name: int(addr.rsplit(":", 1)[1]) for name, addr in bound.items()})

    start = time.monotonic()
    while not os.path.exists(addresses):
        if time.monotonic() - start > 20 or lb.poll() is not None:
            sys.exit("ringlb did not start:\n" + open(f"{work}/ringlb.log").read())
        await asyncio.sleep(0.05)
    learn()
    deadline = time.monotonic() + args.minutes * 60
    samples = []  # (seconds, rss KiB, fds, threads)

    async def chaos():
        t0 = time.monotonic()
        step, with_pp, bad_written = 0, True, False
        down = None
        while time.monotonic() < deadline - 5:
            await asyncio.sleep(1)
            t = time.monotonic() - t0
            step += 1
            if step % 2 == 0:  # churn: drop one echo target, rotating
                keep = [e for i, e in enumerate(echo) if i != (step // 2) % len(echo)]
                write(f"{work}/echo.txt", targets(keep))
            if step % 7 == 0 and down is None:  # health flip: health port closed for 2 s
                down = echo[(step // 7) % len(echo)]
                await down.sicken()
                down_until = t + 2
            if down is not None and t >= down_until:
                await down.heal()
                down = None
            if step % 15 == 0:  # SIGHUP: the PROXY-protocol listener comes or goes
                with_pp = not with_pp
                if not with_pp:
                    ports.pop("pp", None)  # clients stop using it before it goes
                write(f"{work}/ringlb.toml", config(with_pp, health_port))
                lb.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.5)
                learn()
            if not bad_written and t >= 30:  # once, on purpose: rejected, logged at ERROR
                write(f"{work}/echo.txt", "this is not a target\n")
                bad_written = True
            if step % 5 == 0:
                samples.append((time.monotonic() - t0, *sample(lb.pid)))
        if down is not None:
            await down.heal()
        write(f"{work}/echo.txt", targets(echo))

    async def progress():
        while time.monotonic() < deadline:
            await asyncio.sleep(60)
            done = sum(STATS.ok.values())
            print(f"[{(time.monotonic() - start) / 60:4.1f} min] {done} operations ok, "
                  f"{sum(STATS.failed.values())} failed, {STATS.corrupt} corrupt", file=sys.stderr)

    try:
        await asyncio.gather(chaos(), progress(), *clients(deadline, ports))
    finally:
        lb.send_signal(signal.SIGTERM)
        try:
            lb.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lb.kill()
        for e in echo + stable + pp:
            e.close()
    log.seek(0)
    text = log.read()
    if os.environ.get("SOAK_KEEP_LOG"):
        with open(os.environ["SOAK_KEEP_LOG"], "w") as f:
            f.write(text)
    return samples, text


def median_in(samples, lo, hi, col):
    vals = [s[col] for s in samples if lo <= s[0] < hi]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    args = ap.parse_args()
    if not 0.5 <= args.minutes <= 120:
        sys.exit("--minutes must be between 0.5 and 120")
    ensure([])
    work = workdir("ringlb-soak-")
    samples, log = asyncio.run(main_async(args, work))

    total = args.minutes * 60
    # The second minute against the last (for a short run: second quarter vs last).
    span = 60 if args.minutes >= 3 else total / 4
    second, last = (span, 2 * span), (total - span, total)
    checks = []
    failed = sum(STATS.failed.values())
    checks.append(("failed operations", failed, failed == 0))
    expired = sum(1 for l in log.splitlines() if "deregistration_delay over" in l)
    checks.append(("drains that ran out (none should here)", expired, expired == 0))
    checks.append(("corrupt echoes", STATS.corrupt, STATS.corrupt == 0))
    for col, name, slack in ((1, "RSS KiB", 1024), (2, "open fds", 16)):
        a, b = median_in(samples, *second, col), median_in(samples, *last, col)
        ok = a is not None and b is not None and b <= a * 1.05 + slack
        checks.append((f"{name}: second vs last median", f"{a} -> {b}", ok))
    threads = sorted({s[3] for s in samples})
    checks.append(("threads seen", threads, len(threads) == 1))
    errors = [l for l in log.splitlines() if " ERROR " in l and "this is not a target" not in l
              and "echo.txt:1" not in l]
    checks.append(("unexpected ERROR lines", len(errors), not errors))

    print(f"\nsoak: {args.minutes:g} min, {sum(STATS.ok.values())} operations ok, "
          f"{STATS.listener_removed} on a listener a SIGHUP removed\n")
    print("| operation | ok | failed |")
    print("|---|---|---|")
    for kind in sorted(set(STATS.ok) | set(STATS.failed)):
        print(f"| {kind} | {STATS.ok.get(kind, 0)} | {STATS.failed.get(kind, 0)} |")
    print("\n| check | value | verdict |")
    print("|---|---|---|")
    for name, value, ok in checks:
        print(f"| {name} | {value} | {'ok' if ok else 'FAILED'} |")
    for e in STATS.examples + errors[:5]:
        print(f"  {e}")
    passed = sum(1 for _, _, ok in checks if ok)
    print(f"soak: {passed} passed, {len(checks) - passed} failed")
    sys.exit(0 if passed == len(checks) else 1)


if __name__ == "__main__":
    main()
