"""Unit tests of bench/study_lib.py, bench/compare.py and bench/plot.py (python3 -m unittest discover tests/python).

The data handling (formats, keys, ratios, regression flags, exit codes) is tested on synthetic reports written to a
temporary folder, with rates chosen so that every expected number is known; the plots only where matplotlib
imports. The committed bench/results files are read once as a smoke test of the real formats.
"""
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare  # noqa: E402
import study_lib as L  # noqa: E402

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def dense_row(seq, tflops, **kw):
    """A distattn_bench dense row; time from the flash formula so that rate and time agree."""
    causal = kw.get("causal", False)
    flops = 4 * seq * seq * 32 * 128 * (0.5 if causal else 1.0)
    row = {"seq": seq, "time_ms": flops / (tflops * 1e12) * 1e3, "tflops": tflops, "gbps": None, "max_err": None,
           "wrong": 0, "B": 1, "H": 32, "Hkv": 32, "D": 128, "causal": causal, "window": 0, "alibi": False,
           "pass": "fwd", "dtype": "bf16", "flops": flops}
    row.update(kw)
    return row


def bench_doc(op, rows, commit="aaaaaaa", device="GPU-X", ranks=1):
    return {"peer": "distattn", "device": device, "date": "2026-11-22T10:00:00Z", "git_commit": commit,
            "op": op, "ranks": ranks, "options": {}, "rows": rows, "status": "OK"}


def sbs_doc(jobs, commit="bbbbbbb", device="GPU-X"):
    """A merge_side_by_side.py report: jobs = [(name, op, ours_rows, peer_rows)]."""
    flat, jlist = [], []
    for name, op, ours, peers in jobs:
        jlist.append({"name": name, "op": op, "options": {}, "status": "OK", "rows": []})
        flat += [dict(r, peer="distattn", job=name, ratio=None) for r in ours]
        flat += [dict(r, job=name) for r in peers]
    return {"kind": "side_by_side", "date": "2026-11-22T11:00:00Z", "device": device, "git_commit": commit,
            "jobs": jlist, "rows": flat}


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def write(self, name, doc):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    def run_compare(self, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = compare.main(list(args), out=out)
        return rc, out.getvalue(), err.getvalue()


class LoadingTest(Tmp):
    def test_formats_are_detected(self):
        self.assertEqual(L.detect_format(sbs_doc([])), "side_by_side")
        self.assertEqual(L.detect_format(bench_doc("dense", [])), "bench")
        self.assertEqual(L.detect_format({"peer_suite": "torch", "op": "dense", "rows": []}), "peers")
        self.assertIsNone(L.detect_format({"rows": []}))
        self.assertIsNone(L.detect_format([1, 2]))
        self.assertIsNone(L.detect_format({"kind": "side_by_side", "rows": []}))  # no jobs

    def test_side_by_side_rows_take_op_and_defaults(self):
        peer = {"peer": "torch-flash", "seq": 4096, "B": 1, "H": 32, "Hkv": 32, "D": 128, "causal": True,
                "alibi": False, "pass": "fwd", "dtype": "bf16", "tflops": 300.0, "time_ms": 1.0}
        rows = L.rows_of(sbs_doc([("dense fwd, causal", "dense", [dense_row(4096, 330.0, causal=True)], [peer])]),
                         "x.json")
        self.assertEqual([r["impl"] for r in rows], ["distattn", "torch-flash"])
        for r in rows:
            self.assertEqual(r["op"], "dense")
            self.assertEqual(r["window"], 0)  # the peer row leaves it out
            self.assertEqual(r["ranks"], 1)
            self.assertEqual(r["label"], "dense fwd causal")
            self.assertEqual(r["commit"], "bbbbbbb")
        self.assertEqual(L.peer_key(rows[0]), L.peer_key(rows[1]))

    def test_ring_layouts_match_for_peers_not_for_regressions(self):
        ours = dense_row(32768, 300.0, causal=True, ranks=2, layout="zigzag", compute_ms=10.0, exposed_comm_ms=1.0)
        theirs = dict(ours, peer="torch-context-parallel", layout="head-tail", tflops=250.0)
        rows = L.rows_of(sbs_doc([("ring", "ring", [ours], [theirs])]), "r.json")
        self.assertEqual(rows[0]["label"], "ring fwd causal N=2")
        self.assertEqual(L.peer_key(rows[0]), L.peer_key(rows[1]))
        self.assertNotEqual(L.row_key(rows[0]), L.row_key(rows[1]))

    def test_keys_separate_every_shape_field(self):
        base = L.rows_of(bench_doc("dense", [dense_row(4096, 300.0)]), "a")[0]
        for field, value in (("seq", 8192), ("causal", True), ("alibi", True), ("window", 256), ("pass", "bwd"),
                             ("B", 2), ("H", 16), ("Hkv", 8), ("D", 64), ("dtype", "fp16"), ("ranks", 4)):
            other = L.rows_of(bench_doc("dense", [dict(dense_row(4096, 300.0), **{field: value})]), "b")[0]
            self.assertNotEqual(L.peer_key(base), L.peer_key(other), field)
        ring = L.rows_of(bench_doc("ring", [dense_row(4096, 300.0)]), "c")[0]
        self.assertNotEqual(L.peer_key(base), L.peer_key(ring))

    def test_bad_inputs_name_the_file(self):
        with self.assertRaisesRegex(L.StudyError, "missing.json: no such file"):
            L.load([os.path.join(self.dir, "missing.json")])
        bad = self.write("bad.json", "{not json")
        with self.assertRaisesRegex(L.StudyError, "bad.json: cannot read JSON"):
            L.load([bad])
        odd = self.write("odd.json", {"hello": 1})
        with self.assertRaisesRegex(L.StudyError, "odd.json: unknown result format"):
            L.load([odd])
        noseq = self.write("noseq.json", bench_doc("dense", [{"tflops": 1.0}]))
        with self.assertRaisesRegex(L.StudyError, "noseq.json: a row without 'seq'"):
            L.load([noseq])
        empty = os.path.join(self.dir, "empty")
        os.mkdir(empty)
        with self.assertRaisesRegex(L.StudyError, "no \\*.json"):
            L.load([empty])

    def test_directory_expands_to_its_json(self):
        self.write("a.json", bench_doc("dense", [dense_row(2048, 100.0)]))
        self.write("b.json", bench_doc("dense", [dense_row(4096, 200.0)]))
        self.write("notes.txt", "ignored")
        self.assertEqual(sorted(r["seq"] for r in L.load([self.dir])), [2048, 4096])


class RatioTest(Tmp):
    def test_ratio_is_ours_over_peer_with_refusals(self):
        ours = [dense_row(4096, 300.0), dense_row(8192, 360.0)]
        peers = [dict(dense_row(4096, 200.0), peer="p1"), dict(dense_row(4096, 600.0), peer="p2"),
                 dict(dense_row(8192, 1.0), peer="p1", tflops=None, error="refused: no")]
        groups = L.ratio_table(L.rows_of(sbs_doc([("j", "dense", ours, peers)]), "s"))
        self.assertEqual(len(groups), 1)
        g = groups[0]
        self.assertEqual(g["peers"], ["p1", "p2"])
        l4, l8 = g["lines"]
        self.assertAlmostEqual(l4["cells"]["p1"][1], 1.5)
        self.assertAlmostEqual(l4["cells"]["p2"][1], 0.5)
        self.assertEqual(l8["cells"]["p1"][:2], (None, None))
        self.assertIn("refused", l8["cells"]["p1"][2])
        self.assertNotIn("p2", l8["cells"])

    def test_duplicates_are_reduced_to_the_median(self):
        rows = L.rows_of(bench_doc("dense", [dense_row(4096, 100.0), dense_row(4096, 300.0)]), "a")
        rows += L.rows_of({"peer_suite": "torch", "op": "dense", "rows": [dict(dense_row(4096, 100.0), peer="p")]},
                          "b")
        line = L.ratio_table(rows)[0]["lines"][0]
        self.assertAlmostEqual(line["ours"], 200.0)
        self.assertAlmostEqual(line["cells"]["p"][1], 2.0)

    def test_compare_prints_the_table(self):
        path = self.write("s.json", sbs_doc([("j", "dense", [dense_row(4096, 300.0)],
                                               [dict(dense_row(4096, 200.0), peer="torch-flash")])]))
        rc, out, _ = self.run_compare(path)
        self.assertEqual(rc, 0)
        self.assertIn("# dense fwd  [TFLOPs]", out)
        self.assertIn("200.0 (1.50x)", out)
        self.assertIn("GPU-X, 2026-11-22, commit bbbbbbb", out)


class RegressionTest(Tmp):
    def setUp(self):
        super().setUp()
        self.base = self.write("base.json", bench_doc("dense", [dense_row(4096, 300.0), dense_row(8192, 400.0),
                                                                dense_row(16384, 400.0)]))

    def current(self, r4, r8, extra=()):
        return self.write("cur.json", bench_doc("dense", [dense_row(4096, r4), dense_row(8192, r8)] + list(extra)))

    def test_flags_only_drops_beyond_the_threshold(self):
        cur = L.load([self.current(271.0, 400.0 * 0.91)])  # -9.67% and -9%: within 10%
        matched, unmatched = L.regressions(cur, L.load([self.base]), 0.10)
        self.assertEqual([m["flagged"] for m in matched], [False, False])
        self.assertEqual(unmatched, [])
        self.assertAlmostEqual(matched[0]["change"], 271.0 / 300.0 - 1)
        matched, _ = L.regressions(cur, L.load([self.base]), 0.05)
        self.assertEqual([m["flagged"] for m in matched], [True, True])

    def test_exit_codes(self):
        rc, out, _ = self.run_compare(self.current(300.0, 330.0), "--baseline", self.base)  # 8K: -17.5%
        self.assertEqual(rc, 1)
        self.assertEqual(out.count("REGRESSION"), 1)
        self.assertIn("1 regression(s) in 2 compared row(s)", out)
        rc, out, _ = self.run_compare(self.current(300.0, 500.0), "--baseline", self.base)  # faster: fine
        self.assertEqual(rc, 0)
        self.assertNotIn("REGRESSION", out)
        rc, _, _ = self.run_compare(self.current(300.0, 330.0), "--baseline", self.base, "--threshold", "0.2")
        self.assertEqual(rc, 0)

    def test_unmatched_rows_are_reported_not_flagged(self):
        cur = self.current(300.0, 400.0, [dense_row(32768, 1.0)])
        rc, out, _ = self.run_compare(cur, "--baseline", self.base, "--no-table")
        self.assertEqual(rc, 0)
        self.assertIn("1 row(s) of ours have no baseline row", out)

    def test_peer_rows_are_not_checked(self):
        base = self.write("b2.json", {"peer_suite": "torch", "op": "dense",
                                      "rows": [dict(dense_row(4096, 900.0), peer="torch-cudnn")]})
        rc, _, err = self.run_compare(self.current(300.0, 400.0), "--baseline", base)
        self.assertEqual(rc, 2)  # the baseline has no row of ours: nothing compared
        self.assertIn("shares no row key", err)

    def test_bad_input_exit_2_names_the_file(self):
        rc, _, err = self.run_compare(os.path.join(self.dir, "gone.json"))
        self.assertEqual(rc, 2)
        self.assertIn("gone.json: no such file", err)
        odd = self.write("odd.json", {"rows": [], "what": 1})
        rc, _, err = self.run_compare(self.current(1.0, 1.0), "--baseline", odd)
        self.assertEqual(rc, 2)
        self.assertIn("odd.json: unknown result format", err)
        rc, _, err = self.run_compare(self.base, "--threshold", "1.5")
        self.assertEqual(rc, 2)

    def test_command_line_exit_codes(self):
        import subprocess
        script = os.path.join(ROOT, "bench", "compare.py")
        p = subprocess.run([sys.executable, script, self.current(300.0, 300.0), "--baseline", self.base],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        p = subprocess.run([sys.executable, script, "/nonexistent/x.json"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn("/nonexistent/x.json", p.stderr)


class PlotDataTest(Tmp):
    def test_tflops_series_and_ring_split(self):
        ours = [dense_row(4096, 300.0), dense_row(2048, 200.0)]
        peers = [dict(dense_row(2048, 100.0), peer="p"), dict(dense_row(4096, 1.0), peer="p", tflops=None)]
        s = L.tflops_series(L.rows_of(sbs_doc([("j", "dense", ours, peers)]), "s"))
        self.assertEqual(s, {"dense fwd": {"distattn": [(2048, 200.0), (4096, 300.0)], "p": [(2048, 100.0)]}})
        ring = dense_row(32768, 300.0, ranks=2, layout="zigzag", compute_ms=9.0, exposed_comm_ms=1.5)
        cp = dict(ring, peer="cp", layout="head-tail", tflops=280.0, time_ms=12.0)
        split = L.ring_split(L.rows_of(sbs_doc([("r", "ring", [ring], [cp])]), "r"))
        (seq, t, comp, exp, pt), = split["ring fwd N=2"]
        self.assertEqual((seq, comp, exp, pt), (32768, 9.0, 1.5, {"cp": 12.0}))

    def test_scaling_efficiency(self):
        one = L.rows_of(bench_doc("dense", [dense_row(65536, 400.0, causal=True)]), "d")
        two = L.rows_of(bench_doc("ring", [dense_row(65536, 360.0, causal=True, ranks=2, layout="zigzag")]), "r")
        four = L.rows_of(bench_doc("ring", [dense_row(65536, 300.0, causal=True, ranks=4, layout="zigzag")]), "r")
        other = L.rows_of(bench_doc("ring", [dense_row(65536, 300.0, ranks=2, layout="zigzag")]), "x")  # no 1-GPU
        used = []
        sc = L.scaling(one + two + four + other, used)
        self.assertEqual(list(sc), ["fwd causal S=64K"])
        self.assertEqual([n for n, _ in sc["fwd causal S=64K"]], [1, 2, 4])
        self.assertAlmostEqual(sc["fwd causal S=64K"][1][1], 0.9)
        self.assertAlmostEqual(sc["fwd causal S=64K"][2][1], 0.75)
        self.assertEqual(L.scaling(two + four), {})
        self.assertEqual(len({id(r) for r in used}), 3)

    def test_positional_overhead(self):
        plain = dense_row(8192, 300.0, causal=True)
        alibi = dict(plain, alibi=True, time_ms=plain["time_ms"] * 1.25, tflops=240.0)
        rope = {"seq": 8192, "time_ms": plain["time_ms"] * 0.02, "tflops": None, "gbps": 3000.0, "B": 1, "H": 32,
                "Hkv": 32, "D": 128, "dtype": "bf16", "rotary_dim": 128, "style": "neox"}
        rows = L.rows_of(bench_doc("dense", [plain, alibi]), "a") + L.rows_of(bench_doc("rope", [rope]), "b")
        pos = L.positional(rows)
        self.assertEqual(sorted(pos), ["ALiBi: dense fwd causal", "RoPE: dense fwd causal"])
        self.assertAlmostEqual(pos["ALiBi: dense fwd causal"][0][1], 25.0)
        self.assertAlmostEqual(pos["RoPE: dense fwd causal"][0][1], 2.0)
        self.assertEqual(L.positional(L.rows_of(bench_doc("dense", [plain]), "c")), {})

    def test_committed_results_load(self):
        results = os.path.join(ROOT, "bench", "results")
        found = [os.path.join(results, d) for d in sorted(os.listdir(results)) if d.startswith("2026")] \
            if os.path.isdir(results) else []
        if not found:
            self.skipTest("no committed bench/results")
        rows = L.load(found)
        self.assertTrue(any(r["impl"] == L.OURS for r in rows))
        for r in rows:
            self.assertIsNotNone(r["op"])
        self.assertTrue(L.ratio_table(rows))


@unittest.skipUnless(HAS_MPL, "matplotlib not installed: plots not tested")
class PlotTest(Tmp):
    def test_plots_written_and_skipped(self):
        import plot
        d = self.write("d.json", bench_doc("dense", [dense_row(4096, 300.0, causal=True),
                                                      dense_row(8192, 350.0, causal=True)]))
        r = self.write("r.json", bench_doc("ring", [dense_row(8192, 300.0, causal=True, ranks=2, layout="zigzag",
                                                              compute_ms=1.0, exposed_comm_ms=0.1)], ranks=2))
        out = os.path.join(self.dir, "png")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            self.assertEqual(plot.main([d, r, "--out", out, "--dpi", "50"]), 0)
        self.assertEqual(sorted(os.listdir(out)), ["ring_time_split.png", "scaling_efficiency.png",
                                                   "tflops_vs_seq.png"])
        self.assertIn("positional_overhead skipped", buf.getvalue())
        for f in os.listdir(out):
            with open(os.path.join(out, f), "rb") as fh:
                self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(plot.main([os.path.join(self.dir, "none.json"), "--out", out]), 2)


if __name__ == "__main__":
    unittest.main()
