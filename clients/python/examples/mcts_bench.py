"""The MCTS hot loop through the socket, as agents run it: each step checks a workspace
out to a node (discarding), writes 3 small files through the mount, snapshots, and
annotates the new node. N agents (threads, one client and one workspace each) share one
root snapshot. Prints steps per second for each agent count and durability.

    python3 mcts_bench.py --socket S --root s1 --dir /mnt/bench --agents 1,8,32 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from typing import List

from helios_client import Client


def agent(socket: str, root: str, mp: str, stop_at: float, durability: str,
          counts: List[int], i: int, engine: str) -> None:
    rnd = random.Random(i)
    with Client(socket) as h:
        ws = h.create_workspace(mp, from_snapshot=root, engine=engine)["id"]
        nodes = [root]
        n = 0
        while time.monotonic() < stop_at:
            h.checkout(ws, rnd.choice(nodes[-16:]), discard=True)
            for k in range(3):
                with open(os.path.join(mp, f"agent-{k}.txt"), "w") as f:
                    f.write(f"step {n} file {k}\n")
            s = h.snapshot(ws, durability=durability)
            h.annotate(s["id"], annotations={"visits": 1, "value": rnd.random()},
                       durability=durability)
            nodes.append(s["id"])
            n += 1
        counts[i] = n
        h.delete_workspace(ws)


def run(socket: str, root: str, base: str, agents: int, seconds: float,
        durability: str, engine: str) -> float:
    counts = [0] * agents
    stop_at = time.monotonic() + seconds
    threads = []
    for i in range(agents):
        mp = os.path.join(base, f"a{agents}-{durability}-{engine}-{i}")
        os.makedirs(mp, exist_ok=True)
        t = threading.Thread(target=agent, args=(socket, root, mp, stop_at, durability, counts, i, engine))
        t.start()
        threads.append(t)
    start = time.monotonic()
    for t in threads:
        t.join()
    took = max(time.monotonic() - start, seconds)
    return sum(counts) / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--agents", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--engines", default="fuse,overlay")
    args = ap.parse_args()
    print("| engine | durability | agents | steps/s |")
    print("| --- | --- | --- | --- |")
    for engine in args.engines.split(","):
        for durability in ("sync", "buffered"):
            for n in (int(a) for a in args.agents.split(",")):
                rate = run(args.socket, args.root, args.dir, n, args.seconds, durability, engine)
                print(f"| {engine} | {durability} | {n} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
