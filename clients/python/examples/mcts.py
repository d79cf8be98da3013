"""An MCTS controller on helios: every node of the search tree is a snapshot. One
workspace is the agent's working directory; each step checks it out in place to the
node being expanded (backtracking costs a checkout, not a copy), runs the agent's
command in it, snapshots the result as a child node and scores it, counting the
filesystem's own cost (the seeds' engineering cost):

    engineCost = latency_us * 0.01 + new_objects * 0.1
    reward     = codeReward - engineCost

The command runs in the workspace with HELIOS_STEP set; the last line it prints is its
codeReward (a number; a failing command scores 0). At the end the workspace is checked
out to the best node and every snapshot off the best path is pruned.

    python3 mcts.py --from s1 --mountpoint /tmp/agent --steps 50 \\
        --command 'echo $HELIOS_STEP >> log; wc -l < log'
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from helios_client import Client


@dataclass
class Node:
    snapshot: str
    parent: Optional["Node"] = None
    children: List["Node"] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    reward: float = 0.0

    def ucb(self, c: float) -> float:
        if self.visits == 0:
            return math.inf
        assert self.parent is not None
        return self.value / self.visits + c * math.sqrt(math.log(self.parent.visits + 1) / self.visits)


def engine_cost(metrics: Dict[str, int]) -> float:
    return metrics["latency_us"] * 0.01 + metrics["new_objects"] * 0.1


def code_reward(cmd: str, cwd: str, step: int) -> float:
    env = dict(os.environ, HELIOS_STEP=str(step))
    p = subprocess.run(["sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return 0.0
    lines = p.stdout.strip().splitlines()
    try:
        return float(lines[-1]) if lines else 0.0
    except ValueError:
        return 0.0


def search(h: Client, root: str, mountpoint: str, command: str, steps: int,
           children: int, c: float = 1.4) -> Dict[str, object]:
    ws = h.create_workspace(mountpoint, from_snapshot=root)
    tree = Node(root)
    for step in range(steps):
        # Select: descend by UCB to a node with room for another child.
        node = tree
        while len(node.children) >= children:
            node = max(node.children, key=lambda n: n.ucb(c))
        # Expand: back to that node in place, act, snapshot the result.
        h.checkout(ws["id"], node.snapshot, discard=True)
        reward = code_reward(command, mountpoint, step)
        s = h.snapshot(ws["id"], label=f"step-{step}")
        child = Node(s["id"], parent=node)
        child.reward = reward - engine_cost(s["metrics"])
        node.children.append(child)
        # Back up.
        n: Optional[Node] = child
        while n is not None:
            n.visits += 1
            n.value += child.reward
            n = n.parent
        h.annotate(child.snapshot, annotations={"reward": child.reward, "visits": child.visits})
    # The best leaf by mean value along the most visited path.
    best = tree
    while best.children:
        best = max(best.children, key=lambda n: (n.visits, n.value / max(n.visits, 1)))
    h.checkout(ws["id"], best.snapshot, discard=True)
    # Prune everything off the best path.
    path = set()
    n = best
    while n is not None:
        path.add(n.snapshot)
        n = n.parent
    pruned: List[str] = []
    stack = [tree]
    while stack:
        n = stack.pop()
        for ch in n.children:
            if ch.snapshot in path:
                stack.append(ch)
            else:
                pruned += h.delete_snapshot(ch.snapshot, recursive=True)
    return {"workspace": ws["id"], "best": best.snapshot, "best_reward": best.reward,
            "path": sorted(path), "pruned": pruned}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default=None)
    ap.add_argument("--from", dest="root", required=True, help="the root snapshot")
    ap.add_argument("--mountpoint", required=True, help="an empty directory for the agent")
    ap.add_argument("--command", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--children", type=int, default=3)
    args = ap.parse_args(argv)
    with Client(args.socket) as h:
        out = search(h, args.root, args.mountpoint, args.command, args.steps, args.children)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
