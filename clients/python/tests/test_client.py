"""The Python client against a real daemon (``HELIOS_BIN``, default the release build):
every endpoint, errors as typed exceptions with the API's code, and the MCTS example."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from helios_client import (  # noqa: E402
    BadRequest, Client, Dirty, HeliosError, InUse, MergeConflict, NoCommonAncestor, NotFound)

import mcts  # noqa: E402

HELIOS = os.environ.get("HELIOS_BIN", "/var/tmp/helios-target/release/helios")


class DaemonTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.sock = os.path.join(self.dir.name, "helios.sock")
        self.log = open(os.path.join(self.dir.name, "daemon.log"), "wb")
        self.proc = subprocess.Popen(
            [HELIOS, "serve", "--state-dir", os.path.join(self.dir.name, "state"),
             "--socket", self.sock], stderr=self.log)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)
        self.h = Client(self.sock)
        self.mounts: list = []

    def tearDown(self) -> None:
        for w in self.h.workspaces():
            try:
                self.h.delete_workspace(w["id"])
            except HeliosError:
                pass
        self.h.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()
        self.dir.cleanup()

    def path(self, name: str) -> str:
        p = os.path.join(self.dir.name, name)
        os.makedirs(p, exist_ok=True)
        return p

    def test_every_endpoint(self) -> None:
        h = self.h
        self.assertEqual(h.health()["status"], "ok")
        src = self.path("src")
        with open(os.path.join(src, "f"), "w") as f:
            f.write("one")
        s1 = h.import_snapshot(src, label="base")
        self.assertEqual(h.get_snapshot(s1["id"])["label"], "base")
        self.assertTrue(h.warm(s1["id"])["native"] in (True, False))
        for engine in ("fuse", "overlay"):
            mp = self.path(f"ws-{engine}")
            ws = h.create_workspace(mp, from_snapshot=s1["id"], engine=engine)
            self.assertEqual(ws["engine"], engine)
            self.assertEqual(h.get_workspace(ws["id"])["base"], s1["id"])
            with open(os.path.join(mp, "f"), "w") as f:
                f.write("two")
            s2 = h.snapshot(ws["id"], label="two", annotations={"visits": 1}, durability="buffered")
            self.assertEqual(s2["parent"], s1["id"])
            self.assertEqual(h.diff(s1["id"], s2["id"])[0]["path"], "f")
            with open(os.path.join(mp, "f"), "w") as f:
                f.write("dirty")
            with self.assertRaises(Dirty) as e:
                h.checkout(ws["id"], s1["id"])
            self.assertEqual(e.exception.code, "dirty")
            h.checkout(ws["id"], s1["id"], discard=True)
            with open(os.path.join(mp, "f")) as f:
                self.assertEqual(f.read(), "one")
            self.assertIn("total", h.requests(ws["id"]))
            out = os.path.join(self.dir.name, f"export-{engine}")
            h.export(s2["id"], out)
            with open(os.path.join(out, "f")) as f:
                self.assertEqual(f.read(), "two")
            a = h.annotate(s2["id"], annotations={"visits": 2, "gone": None}, durability="buffered")
            self.assertEqual(a["annotations"]["visits"], 2)
            self.assertIn(s2["id"], [s["id"] for s in h.snapshots(parent=s1["id"])])
            h.delete_workspace(ws["id"])
            self.assertEqual(h.delete_snapshot(s2["id"]), [s2["id"]])
        mp = self.path("ws-quota")
        ws = h.create_workspace(mp, from_snapshot=s1["id"], quota_bytes=1024, quota_inodes=8)
        self.assertEqual(ws["quota"], {"bytes": 1024, "inodes": 8})
        self.assertEqual(ws["usage"], {"bytes": 3, "inodes": 1})
        with self.assertRaises(OSError) as e:
            with open(os.path.join(mp, "big"), "wb") as f:
                f.write(b"x" * 2048)
        self.assertEqual(e.exception.errno, errno.EDQUOT)
        self.assertNotIn("quota", h.set_quota(ws["id"]))
        h.delete_workspace(ws["id"])
        self.assertGreaterEqual(h.stats()["snapshots"], 1)
        self.assertIn("helios_", h.metrics())
        self.assertEqual(h.fsck()["errors"], [])
        self.assertIn("deltas", h.pack())
        self.assertIn("freed_objects", h.gc())
        self.assertEqual(len(h.workspaces()), 0)

    def test_errors_carry_the_api_code(self) -> None:
        h = self.h
        with self.assertRaises(NotFound) as e:
            h.get_snapshot("s999")
        self.assertEqual((e.exception.status, e.exception.code), (404, "not_found"))
        with self.assertRaises(BadRequest):
            h.get_snapshot("nope")
        with self.assertRaises(BadRequest):
            h.create_workspace(self.path("m"), engine="zfs")
        src = self.path("src2")
        s1 = h.import_snapshot(src)
        ws = h.create_workspace(self.path("m2"), from_snapshot=s1["id"])
        with self.assertRaises(InUse):
            h.delete_snapshot(s1["id"])
        with self.assertRaises(BadRequest):
            h.snapshot(ws["id"], durability="eventually")

    def test_merge_of_two_branches_and_its_conflict(self) -> None:
        h = self.h
        src = self.path("msrc")
        with open(os.path.join(src, "f"), "w") as f:
            f.write("1\n2\n3\n4\n5\n")
        s0 = h.import_snapshot(src)
        mp = self.path("mws")
        ws = h.create_workspace(mp, from_snapshot=s0["id"])
        branches = []
        for old, new in (("1", "one"), ("5", "five"), ("1", "uno")):
            h.checkout(ws["id"], s0["id"], discard=True)
            with open(os.path.join(mp, "f"), "w") as f:
                f.write("1\n2\n3\n4\n5\n".replace(old, new))
            branches.append(h.snapshot(ws["id"])["id"])
        m = h.merge(branches[0], branches[1], into=ws["id"], label="m")
        self.assertEqual((m["parent"], m["merged"]), (branches[0], branches[1]))
        with open(os.path.join(mp, "f")) as f:
            self.assertEqual(f.read(), "one\n2\n3\n4\nfive\n")
        with self.assertRaises(MergeConflict) as e:
            h.merge(branches[0], branches[2])
        self.assertEqual(e.exception.paths, ["f"])
        with self.assertRaises(NoCommonAncestor):
            h.merge(branches[0], h.import_snapshot(self.path("other"))["id"])
        with open(os.path.join(mp, "dirty"), "w") as f:
            f.write("x")
        with self.assertRaises(Dirty):
            h.merge(branches[0], branches[1], into=ws["id"])

    def test_the_mcts_example_searches_checks_out_the_best_and_prunes(self) -> None:
        h = self.h
        src = self.path("proj")
        with open(os.path.join(src, "log"), "w") as f:
            f.write("")
        root = h.import_snapshot(src)["id"]
        mp = self.path("agent")
        # The reward: how many lines the log has (deeper nodes score more).
        out = mcts.search(h, root, mp, 'echo "$HELIOS_STEP" >> log; wc -l < log', steps=12, children=2)
        self.assertEqual(h.get_workspace(out["workspace"])["base"], out["best"])
        alive = {s["id"] for s in h.snapshots()}
        self.assertTrue(set(out["path"]) <= alive)
        self.assertTrue(out["pruned"], "siblings off the best path are pruned")
        self.assertFalse(alive & set(out["pruned"]))
        with open(os.path.join(mp, "log")) as f:
            depth = len(f.read().split())
        self.assertEqual(depth, len(out["path"]) - 1, "the workspace shows the best node")
        self.assertEqual(h.fsck()["errors"], [])


if __name__ == "__main__":
    unittest.main()
