#!/usr/bin/env python3
"""Memory per idle proxied connection: open N connections through ringlb (one
worker on CPU 0) to a backend that accepts and waits, and read ringlb's RSS.

    bench/idle.py [--connections 4000]
"""
import argparse, os, resource, selectors, socket, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ensure, rss_kib, start_ringlb, stop, workdir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=4000)
    args = ap.parse_args()
    ensure([])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = 2 * args.connections + 100
    if hard < need:
        sys.exit(f"need {need} open files for clients and backend; hard limit is {hard}")

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(4096)
    backend.setblocking(False)
    held = []
    work = workdir("ringlb-idle-")
    lb, port = start_ringlb(work, [f"127.0.0.1:{backend.getsockname()[1]}"])
    try:
        time.sleep(0.5)
        before = rss_kib(lb.pid)
        clients = []
        deadline = time.time() + 60
        for i in range(args.connections):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(c)
            while True:  # accept what has arrived so the backlog never fills
                try:
                    s, _ = backend.accept()
                    held.append(s)
                except BlockingIOError:
                    break
            if i % 500 == 499:
                print(f"  {i + 1}/{args.connections} open", file=sys.stderr)
        while len(held) < args.connections and time.time() < deadline:
            try:
                s, _ = backend.accept()
                held.append(s)
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(1.0)
        after = rss_kib(lb.pid)
        per = (after - before) * 1024 / args.connections
        print("| connections | ringlb RSS before (KiB) | with connections (KiB) | bytes per connection |")
        print("|---|---|---|---|")
        print(f"| {args.connections} | {before} | {after} | {per:.0f} |")
        for c in clients:
            c.close()
    finally:
        stop(lb)


if __name__ == "__main__":
    main()
