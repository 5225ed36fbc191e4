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

    def test_forced_forward_kernel_is_its_own_series(self):
        row = dense_row(16384, 370.0)
        default = L.rows_of(dict(bench_doc("dense", [row]), forward_kernel="auto"), "a")
        forced = L.rows_of(dict(bench_doc("dense", [row]), forward_kernel="mma"), "b")
        legacy = L.rows_of(bench_doc("dense", [row]), "c")  # reports written before the field existed
        self.assertEqual([r["impl"] for r in default + legacy], [L.OURS, L.OURS])
        self.assertEqual([r["impl"] for r in forced], [L.OURS + "[mma]"])
        series = L.tflops_series(default + forced)
        (panel,) = series.values()
        self.assertEqual(sorted(panel), [L.OURS, L.OURS + "[mma]"])  # not pooled into one median

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

    def test_default_threshold_is_ten_percent(self):
        self.assertEqual(compare.main.__defaults__, (None, sys.stdout))  # nothing hides the argparse default
        rc, out, _ = self.run_compare(self.current(300.0 * 0.91, 400.0 * 0.905), "--baseline", self.base)
        self.assertEqual(rc, 0, out)  # -9% and -9.5%: within the default 10%
        self.assertIn("flagged below -10.0%", out)
        rc, out, _ = self.run_compare(self.current(300.0 * 0.91, 400.0 * 0.89), "--baseline", self.base)
        self.assertEqual(rc, 1, out)  # -11% at 8K
        self.assertEqual(out.count("REGRESSION"), 1)
        self.assertIn("-11.0%  REGRESSION", out)

    def test_warns_when_the_warm_ups_differ(self):
        # The baseline ran with a short warm-up (no warmup_ms: 0), the results after 300 ms: a warning line, the
        # check itself unchanged. Same warm-ups: no warning.
        warm = bench_doc("dense", [dense_row(4096, 300.0), dense_row(8192, 400.0)])
        warm["options"] = {"warmup_ms": 300}
        rc, out, _ = self.run_compare(self.write("warm.json", warm), "--baseline", self.base)
        self.assertEqual(rc, 0, out)
        self.assertIn("timed after different warm-ups (--warmup-ms 300 now, 0 in the baseline)", out)
        rc, out, _ = self.run_compare(self.current(300.0, 400.0), "--baseline", self.base)
        self.assertNotIn("different warm-ups", out)
        # The positional study's settings (a string) and a side-by-side job's options are read too.
        self.assertEqual([r["warmup_ms"] for r in L.rows_of(dict(warm, options={}, settings={"warmup_ms": "300"}),
                                                            "p")], [300, 300])
        sbs = sbs_doc([("j", "dense", [dense_row(4096, 1.0)], [])])
        sbs["jobs"][0]["options"] = {"warmup_ms": 250}
        self.assertEqual([r["warmup_ms"] for r in L.rows_of(sbs, "s")], [250])

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

    def test_dilated_scaling_and_compare_table(self):
        import compare
        d1 = L.rows_of(bench_doc("dilated", [dense_row(262144, 300.0, causal=True)]), "d1")
        d4 = L.rows_of(bench_doc("dilated", [dense_row(262144, 270.0, causal=True, ranks=4)], ranks=4), "d4")
        dense1 = L.rows_of(bench_doc("dense", [dense_row(262144, 500.0, causal=True)]), "x")  # not dilated's reference
        sc = L.scaling(d1 + d4 + dense1)
        self.assertEqual(list(sc), ["dilated fwd causal S=256K"])
        self.assertAlmostEqual(sc["dilated fwd causal S=256K"][1][1], 0.9)
        d = self.write("d1.json", bench_doc("dilated", [dense_row(262144, 300.0, causal=True)]))
        f = self.write("d4.json", bench_doc("dilated", [dense_row(262144, 270.0, causal=True, ranks=4)], ranks=4))
        buf = io.StringIO()
        self.assertEqual(compare.main([d, f, "--scaling"], out=buf), 0)
        self.assertIn("dilated fwd causal S=256K", buf.getvalue())
        self.assertIn("90.0%", buf.getvalue())
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(compare.main([d, "--scaling"], out=io.StringIO()), 2)  # no multi-GPU series

    def test_positional_overhead(self):
        plain = dense_row(8192, 300.0, causal=True)
        alibi = dict(plain, alibi=True, time_ms=plain["time_ms"] * 1.25, tflops=240.0)
        rope = {"seq": 8192, "time_ms": plain["time_ms"] * 0.02, "tflops": None, "gbps": 3000.0, "B": 1, "H": 32,
                "Hkv": 32, "D": 128, "dtype": "bf16", "rotary_dim": 128, "style": "neox"}
        rows = L.rows_of(bench_doc("dense", [plain, alibi]), "a") + L.rows_of(bench_doc("rope", [rope]), "b")
        pos = L.positional(rows)
        self.assertEqual(sorted(pos), ["ALiBi: dense fwd causal", "RoPE kernel alone: dense fwd causal"])
        self.assertAlmostEqual(pos["ALiBi: dense fwd causal"][0][1], 25.0)
        self.assertAlmostEqual(pos["RoPE kernel alone: dense fwd causal"][0][1], 2.0)
        self.assertEqual(L.positional(L.rows_of(bench_doc("dense", [plain]), "c")), {})

    def test_committed_results_load(self):
        results = os.path.join(ROOT, "bench", "results")
        # Every committed folder (or subfolder, e.g. a side-by-side run's cp/) that holds result JSON itself; probe-only
        # folders keep their rows as *.jsonl.
        found = sorted(root for root, _, files in os.walk(results)
                       if os.path.relpath(root, results).startswith("2026") and any(f.endswith(".json") for f in files)) \
            if os.path.isdir(results) else []
        if not found:
            self.skipTest("no committed bench/results")
        rows = L.load(found)
        self.assertTrue(any(r["impl"] == L.OURS for r in rows))
        for r in rows:
            self.assertIsNotNone(r["op"])
        self.assertTrue(L.ratio_table(rows))


def study_rows(times, share=None):
    """distattn_bench dense rows of a positional study: times = {(pass, causal, variant, seq): time_ms}."""
    rows = []
    for (pss, causal, variant, seq), t in times.items():
        r = dense_row(seq, 100.0, causal=causal, alibi=variant == "alibi", rope=variant == "rope")
        r.update(time_ms=t, tflops=r["flops"] / (t * 1e-3) / 1e12, **{"pass": pss})
        if variant == "rope":
            r.update(rotary_dim=128, style="neox", rope_ms=share * t / 100.0 if share else None,
                     rope_share_pct=share)
        rows.append(r)
    return rows


class NewestOnlyTest(Tmp):
    def test_newest_run_of_each_point_wins(self):
        old = bench_doc("dense", [dense_row(4096, 300.0), dense_row(8192, 310.0)], commit="old0000")
        new = bench_doc("dense", [dense_row(8192, 600.0)], commit="new0000")
        new["date"] = "2026-11-23T09:00:00Z"  # later than bench_doc's default
        rows = L.load([self.write("o.json", old), self.write("n.json", new)])
        kept = L.newest_only(rows)
        got = sorted((r["seq"], r["rate"], r["commit"]) for r in kept)
        # 8K: only the newer run; 4K: the old run is the only one and stays.
        self.assertEqual(got, [(4096, 300.0, "old0000"), (8192, 600.0, "new0000")])
        # Pooled (no filter), 8K is the median of both runs: the reason for the filter.
        pooled = L.tflops_series(rows)
        self.assertEqual(dict(next(iter(pooled.values()))[L.OURS])[8192], 455.0)


class KernelTagTest(Tmp):
    def test_forced_kernels_are_their_own_series(self):
        auto = bench_doc("dense", [dense_row(4096, 500.0)])
        fwd_mma = dict(bench_doc("dense", [dense_row(4096, 300.0)]), forward_kernel="mma")
        bwd_mma = dict(bench_doc("dense", [dense_row(4096, 280.0)]), forward_kernel="auto", backward_kernel="mma")
        both = dict(bench_doc("dense", [dense_row(4096, 250.0)]), forward_kernel="mma", backward_kernel="mma")
        rows = L.load([self.write(n + ".json", d) for n, d in
                       (("a", auto), ("f", fwd_mma), ("b", bwd_mma), ("m", both))])
        self.assertEqual(sorted(r["impl"] for r in rows),
                         sorted([L.OURS, L.OURS + "[mma]", L.OURS + "[bwd=mma]", L.OURS + "[mma,bwd=mma]"]))


class PositionalTest(Tmp):
    def rows(self, **kw):
        return L.rows_of(bench_doc("dense", study_rows(**kw)), "study")

    def test_rope_is_a_key_field_and_in_the_label(self):
        plain, rope = self.rows(times={("fwd", True, "none", 8192): 2.0, ("fwd", True, "rope", 8192): 2.1})
        self.assertNotEqual(L.peer_key(plain), L.peer_key(rope))
        self.assertEqual(rope["label"], "dense fwd causal rope")
        self.assertEqual((rope["rotary_dim"], rope["style"]), (128, "neox"))
        self.assertEqual((plain["rotary_dim"], plain["style"]), (None, None))  # a plain dense row has no rotary dims
        self.assertEqual(L.plain_key(rope), L.row_key(plain))
        self.assertEqual([L.variant_of(r) for r in (plain, rope)], ["none", "rope"])
        self.assertEqual(L.variant_of({"rope": True, "alibi": True}), "rope+alibi")
        # A peer row without the field is not RoPE: it matches our plain row, never the rope one.
        peer = L.rows_of({"peer_suite": "torch", "op": "dense", "rows": [dict(dense_row(8192, 1.0, causal=True),
                                                                            peer="p")]}, "p")[0]
        self.assertEqual(L.peer_key(peer), L.peer_key(plain))

    def test_overhead_pairs_and_medians(self):
        times = {("fwd", True, "none", 8192): 2.0, ("fwd", True, "rope", 8192): 2.06,
                 ("fwd", True, "alibi", 8192): 2.2, ("fwd", False, "rope", 8192): 9.0}  # no non-causal 'none'
        rows = self.rows(times=times, share=2.5)
        # A second file with the same keys: each side is reduced to its median before the ratio.
        rows += L.rows_of(bench_doc("dense", study_rows({("fwd", True, "none", 8192): 2.2,
                                                         ("fwd", True, "none", 8192 * 2): 1.0})), "again")
        pairs = L.overhead_pairs(rows)
        self.assertEqual([(p["label"], p["variant"]) for p in pairs],
                         [("dense fwd causal", "rope"), ("dense fwd causal", "alibi")])
        rope, alibi = pairs
        self.assertAlmostEqual(rope["none_ms"], 2.1)
        self.assertAlmostEqual(rope["overhead_pct"], (2.06 / 2.1 - 1) * 100)
        self.assertAlmostEqual(alibi["overhead_pct"], (2.2 / 2.1 - 1) * 100)
        self.assertAlmostEqual(rope["rope_share_pct"], 2.5)
        self.assertIsNone(alibi["rope_share_pct"])

    def test_table_verdict_uses_only_large_s(self):
        times = {}
        for seq, r_pct, a_pct in ((2048, 40.0, 1.0), (8192, 2.9, 4.0), (16384, 1.0, 2.0)):
            times[("fwdbwd", False, "none", seq)] = 10.0
            times[("fwdbwd", False, "rope", seq)] = 10.0 * (1 + r_pct / 100)
            times[("fwdbwd", False, "alibi", seq)] = 10.0 * (1 + a_pct / 100)
        g, = L.positional_table(self.rows(times=times))
        self.assertEqual((g["label"], g["variants"]), ("dense fwdbwd", ["rope", "alibi"]))
        self.assertEqual([ln["seq"] for ln in g["lines"]], [2048, 8192, 16384])
        self.assertAlmostEqual(g["verdict"]["rope"][0], 2.9)  # the 40% at 2K is below the target range
        self.assertTrue(g["verdict"]["rope"][1])
        self.assertAlmostEqual(g["verdict"]["alibi"][0], 4.0)
        self.assertFalse(g["verdict"]["alibi"][1])
        g, = L.positional_table(self.rows(times=times), target_pct=5.0)
        self.assertTrue(g["verdict"]["alibi"][1])
        small = {k: v for k, v in times.items() if k[3] == 2048}
        g, = L.positional_table(self.rows(times=small))
        self.assertEqual(g["verdict"]["rope"], (None, None))

    def test_compare_positional_table(self):
        times = {("fwd", True, "none", 8192): 2.0, ("fwd", True, "rope", 8192): 2.1, ("fwd", True, "alibi", 8192): 2.02}
        path = self.write("study.json", bench_doc("dense", study_rows(times, share=4.5)))
        rc, out, _ = self.run_compare("--positional", path)
        self.assertEqual(rc, 0)
        self.assertIn("# dense fwd causal  (B1 H32 D128 bf16)", out)
        line = [ln for ln in out.splitlines() if ln.strip().startswith("8192")][0].split()
        self.assertEqual(line, ["8192", "2.0000", "2.1000", "+5.00%", "4.50%", "2.0200", "+1.00%"])
        self.assertIn("rope: worst overhead at S >= 8K: +5.00% -> target < 3% MISSED", out)
        self.assertIn("alibi: worst overhead at S >= 8K: +1.00% -> target < 3% met", out)
        rc, out, _ = self.run_compare("--positional", "--target", "6", path)
        self.assertIn("+5.00% -> target < 6% met", out)
        # Without --positional the overhead table follows the ratio table.
        rc, out, _ = self.run_compare(path)
        self.assertEqual(rc, 0)
        self.assertLess(out.index("ratio = ours / peer"), out.index("positional encoding overhead"))
        plain = self.write("plain.json", bench_doc("dense", [dense_row(4096, 300.0)]))
        rc, out, err = self.run_compare("--positional", plain)
        self.assertEqual(rc, 2)
        self.assertIn("no positional pair", err)
        rc, out, _ = self.run_compare(plain)
        self.assertNotIn("positional encoding overhead", out)


class MergePositionalTest(Tmp):
    def manifest(self, lines):
        return self.write("manifest.tsv", "".join("\t".join(str(c) for c in ln) + "\n" for ln in lines))

    def test_merge_keeps_every_run_in_order(self):
        a = self.write("a.json", bench_doc("dense", study_rows({("fwd", True, "none", 2048): 1.0})))
        b = self.write("b.json", bench_doc("dense", study_rows({("fwd", True, "rope", 2048): 1.1}, share=9.0)))
        m = self.manifest([(1, "fwd_causal_none_2K", 0, 2, a), (2, "fwd_causal_rope_2K", 0, 3, b)])
        doc = L.merge_positional(m, {"sizes": "2K"})
        self.assertEqual(doc["kind"], "positional_study")
        self.assertEqual(doc["status"], "OK")
        self.assertEqual((doc["device"], doc["git_commit"]), ("GPU-X", "aaaaaaa"))
        self.assertEqual([r["tag"] for r in doc["runs"]], ["fwd_causal_none_2K", "fwd_causal_rope_2K"])
        self.assertEqual([(r["variant"], r["run"], r["op"]) for r in doc["rows"]], [("none", 1, "dense"),
                                                                                   ("rope", 2, "dense")])
        self.assertEqual(doc["settings"], {"sizes": "2K"})
        # The merged report is a format of its own that every tool reads.
        out = self.write("study.json", doc)
        pairs = L.overhead_pairs(L.load([out]))
        self.assertEqual(len(pairs), 1)
        self.assertAlmostEqual(pairs[0]["overhead_pct"], 10.0)

    def test_failed_missing_and_skipped_runs_fail_the_report(self):
        a = self.write("a.json", bench_doc("dense", study_rows({("fwd", True, "none", 2048): 1.0})))
        bad = dict(bench_doc("dense", study_rows({("fwd", True, "alibi", 2048): 1.0})), status="FAILED")
        b = self.write("b.json", bad)
        m = self.manifest([(1, "x", 0, 1, a), (2, "y", 1, 1, b), (3, "z", 2, 0, ""), (4, "w", -1, 0, "")])
        doc = L.merge_positional(m)
        self.assertEqual([r["status"] for r in doc["runs"]], ["OK", "FAILED", "no JSON", "skipped"])
        self.assertEqual(doc["status"], "FAILED")
        self.assertEqual(len(doc["rows"]), 2)

    def test_bad_manifests_raise(self):
        with self.assertRaisesRegex(L.StudyError, "cannot read the manifest"):
            L.merge_positional(os.path.join(self.dir, "none.tsv"))
        with self.assertRaisesRegex(L.StudyError, "expected 5 tab-separated cells"):
            L.merge_positional(self.manifest([(1, "x", 0)]))
        with self.assertRaisesRegex(L.StudyError, "must be numbers"):
            L.merge_positional(self.manifest([("one", "x", 0, 1, "")]))
        odd = self.write("odd.json", {"rows": []})
        with self.assertRaisesRegex(L.StudyError, "not a distattn_bench -J report"):
            L.merge_positional(self.manifest([(1, "x", 0, 1, odd)]))

    def test_command_line(self):
        a = self.write("a.json", bench_doc("dense", study_rows({("fwd", True, "none", 2048): 1.0})))
        m = self.manifest([(1, "x", 0, 1, a)])
        out = os.path.join(self.dir, "merged.json")
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(L.main(["merge-positional", m, out, "sizes=2K"]), 0)
        with open(out) as f:
            self.assertEqual(json.load(f)["settings"], {"sizes": "2K"})
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(L.main(["merge-positional", m]), 2)
            self.assertEqual(L.main(["merge-positional", m, out, "novalue"]), 2)
            self.assertEqual(L.main(["merge-positional", os.path.join(self.dir, "gone"), out]), 2)


# A stand-in for distattn_bench: reads the options the study passes and writes a -J report whose time is known:
# none = S / 1024 ms, rope +2%, alibi +10% (and exit 1, "FAILED", for the variant in $STUB_FAIL; 1.5x the time for the
# runs whose tag, the -J file's name, is listed in $STUB_SLOW). -o ring rows are 2-rank rows; "-o ring --rope -h" (the
# study's probe) succeeds only with $STUB_RING_ROPE set.
STUB_BENCH = r"""#!/usr/bin/env python3
import json, os, sys
a = sys.argv[1:]
def val(flag):
    return a[a.index(flag) + 1]
if "-h" in a:
    sys.exit(0 if os.environ.get("STUB_RING_ROPE") or "ring" not in a else 2)
op = val("-o")
ranks = 2 if op == "ring" else 1
seq = int(val("-b"))
variant = "rope" if "--rope" in a else "alibi" if "--alibi" in a else "none"
t = seq / 1024 * {"none": 1.0, "rope": 1.02, "alibi": 1.10}[variant]
if os.path.basename(val("-J"))[:-len(".json")] in os.environ.get("STUB_SLOW", "").split():
    t *= 1.5
row = {"seq": seq, "time_ms": t, "tflops": 1.0, "gbps": None, "B": 1, "H": 32, "Hkv": 32, "D": 128,
       "causal": "--causal" in a, "window": 0, "alibi": variant == "alibi", "rope": variant == "rope",
       "pass": val("--pass"), "dtype": "bf16", "wrong": 0, "ranks": ranks}
if op == "ring":
    row["layout"] = val("--layout")
if variant == "rope":
    row.update(rotary_dim=128, style="neox", rope_ms=0.02 * t / 1.02, rope_share_pct=2.0 / 1.02)
failed = os.environ.get("STUB_FAIL") == variant
if os.environ.get("STUB_SLEEP"):
    import time
    time.sleep(float(os.environ["STUB_SLEEP"]))
doc = {"peer": "distattn", "device": "stub", "date": "2026-11-22T00:00:00Z", "git_commit": "c0ffee0", "op": op,
       "ranks": ranks, "command_line": " ".join(a), "options": {}, "rows": [row], "status": "FAILED" if failed else "OK"}
with open(val("-J"), "w") as f:
    json.dump(doc, f)
print(f"{seq} {variant} {t}")
sys.exit(1 if failed else 0)
"""


@unittest.skipUnless(os.path.exists("/bin/bash"), "no bash")
class StudyScriptTest(Tmp):
    def run_study(self, **env):
        import subprocess
        stub = self.write("stub_bench.py", STUB_BENCH)
        os.chmod(stub, 0o755)
        out = os.path.join(self.dir, "out")
        e = dict(os.environ, DISTATTN_BENCH=stub, PYTHON=sys.executable, SIZES="2K 8K")
        e.update(env)
        p = subprocess.run(["/bin/bash", os.path.join(ROOT, "bench", "run_positional_study.sh"), out],
                           capture_output=True, text=True, env=e)
        return p, out

    def test_interleaved_runs_one_report_and_the_table(self):
        p, out = self.run_study()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            doc = json.load(f)
        self.assertEqual(doc["status"], "OK")
        tags = [r["tag"] for r in doc["runs"]]
        self.assertEqual(len(tags), 2 * 2 * 2 * 3)  # S x passes x masks x variants
        # The variants of one (S, pass, mask) run back to back, their order rotating from one group to the next.
        self.assertEqual(tags[:6], ["fwd_causal_none_2K", "fwd_causal_rope_2K", "fwd_causal_alibi_2K",
                                    "fwd_full_rope_2K", "fwd_full_alibi_2K", "fwd_full_none_2K"])
        self.assertEqual(tags[6], "fwdbwd_causal_alibi_2K")
        with open(os.path.join(out, "overhead.txt")) as f:
            table = f.read()
        self.assertEqual(table.count("rope: worst overhead at S >= 8K: +2.00% -> target < 3% met"), 4)
        self.assertEqual(table.count("alibi: worst overhead at S >= 8K: +10.00% -> target < 3% MISSED"), 4)
        self.assertIn(table, p.stdout)  # printed last
        self.assertTrue(os.path.exists(os.path.join(out, "study.log")))

    def test_rounds_interleave_and_the_table_takes_the_median(self):
        # Round 2 of the 8K causal forward's rope run and round 3 of its none run are 1.5x slow (a process that ran
        # slow): the medians of three rounds keep the true overheads (+2%, +10%).
        one = dict(SIZES="8K", PASSES="fwd", MASKS="causal", ROUNDS="3",
                   STUB_SLOW="fwd_causal_rope_8K_r2 fwd_causal_none_8K_r3")
        p, out = self.run_study(**one)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            doc = json.load(f)
        self.assertEqual([r["tag"] for r in doc["runs"]],
                         ["fwd_causal_none_8K_r1", "fwd_causal_rope_8K_r1", "fwd_causal_alibi_8K_r1",
                          "fwd_causal_rope_8K_r2", "fwd_causal_alibi_8K_r2", "fwd_causal_none_8K_r2",
                          "fwd_causal_alibi_8K_r3", "fwd_causal_none_8K_r3", "fwd_causal_rope_8K_r3"])
        self.assertEqual(doc["settings"]["rounds"], "3")
        self.assertEqual(len(doc["rows"]), 9)
        self.assertIn("rope: worst overhead at S >= 8K: +2.00% -> target < 3% met", p.stdout)
        self.assertIn("alibi: worst overhead at S >= 8K: +10.00% -> target < 3% MISSED", p.stdout)
        # One round: the slow run is the only one, and the table shows it.
        p, out = self.run_study(**dict(one, ROUNDS="1", STUB_SLOW="fwd_causal_rope_8K"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("rope: worst overhead at S >= 8K: +53.00% -> target < 3% MISSED", p.stdout)
        for bad in ("0", "two", "-1"):
            p, out = self.run_study(ROUNDS=bad)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("ROUNDS must be a positive integer", p.stderr)

    def test_time_based_warm_up_reaches_every_run(self):
        # WARMUP_MS (default 300) goes to every distattn_bench run as --warmup-ms, and into the report's settings.
        one = dict(SIZES="8K", PASSES="fwd", MASKS="causal", VARIANTS="none rope")
        for env, want in ((one, "300"), (dict(one, WARMUP_MS="0"), "0"), (dict(one, WARMUP_MS="1000"), "1000")):
            p, out = self.run_study(**env)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            with open(os.path.join(out, "positional_study.json")) as f:
                doc = json.load(f)
            self.assertEqual(doc["settings"]["warmup_ms"], want)
            for r in doc["runs"]:
                self.assertIn(f"--warmup-ms {want} ", r["command_line"] + " ")
        for bad in ("-1", "1.5", "x"):
            p, out = self.run_study(**dict(one, WARMUP_MS=bad))
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("WARMUP_MS must be a non-negative integer", p.stderr)

    def test_ring_joins_when_asked_and_rope_only_where_accepted(self):
        one = dict(SIZES="8K", PASSES="fwd", MASKS="causal", OPS="dense ring", RING_LAUNCH="env")
        p, out = self.run_study(**one)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            doc = json.load(f)
        self.assertEqual([r["tag"] for r in doc["runs"]],
                         ["fwd_causal_none_8K", "fwd_causal_rope_8K", "fwd_causal_alibi_8K",
                          "ring_fwd_causal_alibi_8K", "ring_fwd_causal_none_8K"])  # no --rope for the ring
        self.assertIn("--layout zigzag", doc["runs"][-1]["command_line"])
        self.assertIn("# ring fwd causal N=2", p.stdout)
        self.assertIn("rope variant no (the ring op refuses --rope)", p.stdout)
        p, out = self.run_study(STUB_RING_ROPE="1", **one)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            tags = [r["tag"] for r in json.load(f)["runs"]]
        self.assertIn("ring_fwd_causal_rope_8K", tags)
        p, out = self.run_study(OPS="dense tree")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown op", p.stderr)

    def test_failures_and_budget_give_exit_1(self):
        p, out = self.run_study(STUB_FAIL="alibi", PASSES="fwd", MASKS="causal")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            self.assertEqual(json.load(f)["status"], "FAILED")
        # Past MAX_SECONDS no run starts: the rest is recorded as skipped, and the study fails.
        p, out = self.run_study(MAX_SECONDS="1", STUB_SLEEP="1.2", SIZES="2K", PASSES="fwd", MASKS="causal")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        with open(os.path.join(out, "positional_study.json")) as f:
            runs = json.load(f)["runs"]
        self.assertEqual([r["status"] for r in runs], ["OK", "skipped", "skipped"])
        p, out = self.run_study(VARIANTS="none sinusoidal")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown variant", p.stderr)


SCALING_STUB_BENCH = r"""#!/usr/bin/env python3
import json, os, sys
a = sys.argv[1:]
def val(flag):
    return a[a.index(flag) + 1]
op = val("-o")
ranks = int(os.environ.get("STUB_RANKS", "1"))
seq = {"K": 1024, "M": 1048576}.get(val("-b")[-1], 1)
seq *= int(val("-b").rstrip("KM"))
base = {"dense": 400.0, "ring": 400.0, "dilated": 300.0}[op]
tflops = base * (1 - 0.05 * (ranks - 1))
row = {"seq": seq, "time_ms": 1.0, "tflops": tflops, "gbps": None, "B": 1, "H": 32, "Hkv": 32, "D": 128,
       "causal": "--causal" in a, "window": 0, "alibi": False, "pass": val("--pass"), "dtype": "bf16", "wrong": 0,
       "ranks": ranks}
if op == "ring":
    row["layout"] = "zigzag"
doc = {"peer": "distattn", "device": "stub", "date": "2026-11-22T00:00:00Z", "git_commit": "c0ffee0", "op": op,
       "ranks": ranks, "command_line": " ".join(a), "options": {}, "rows": [row], "status": "OK"}
with open(val("-J"), "w") as f:
    json.dump(doc, f)
print(f"   {seq} {op} {ranks} {tflops}")
"""

# Stands in for mpirun: takes -np N, drops the launcher's own options, runs the program once with STUB_RANKS=N.
FAKE_MPIRUN = r"""#!/usr/bin/env python3
import os, sys
a = sys.argv[1:]
n, rest, i = 1, [], 0
while i < len(a):
    if a[i] == "-np":
        n, i = int(a[i + 1]), i + 2
    elif a[i] in ("-x", "--bind-to"):
        i += 2
    elif a[i] in ("--allow-run-as-root", "--oversubscribe"):
        i += 1
    else:
        rest, i = a[i:], len(a)
os.execve(rest[0], rest, dict(os.environ, STUB_RANKS=str(n)))
"""


@unittest.skipUnless(os.path.exists("/bin/bash"), "no bash")
class ScalingScriptTest(Tmp):
    def test_one_two_four_gpus_and_the_table(self):
        import subprocess
        stub = self.write("stub_bench.py", SCALING_STUB_BENCH)
        fake = self.write("fake_mpirun.py", FAKE_MPIRUN)
        for f in (stub, fake):
            os.chmod(f, 0o755)
        out = os.path.join(self.dir, "out")
        e = dict(os.environ, DISTATTN_BENCH=stub, MPIRUN=fake, PYTHON=sys.executable, NPS="1 2 4", PASSES="fwd",
                 RING_GROUPS="2K:2K:1:0 512K:512K:1:0", DILATED_GROUPS="64K:64K:1:0", ONE_GPU_MAX="256K")
        p = subprocess.run(["/bin/bash", os.path.join(ROOT, "bench", "run_scaling_study.sh"), out],
                           capture_output=True, text=True, env=e)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        runs = sorted(f for f in os.listdir(out) if f.endswith(".json"))
        # One GPU: dense (the ring's reference) and dilated, never above ONE_GPU_MAX; 2 and 4 GPUs: ring and dilated.
        self.assertEqual(runs, ["dense_fwd_np1_2K-2K.json", "dilated_fwd_np1_64K-64K.json",
                                "dilated_fwd_np2_64K-64K.json", "dilated_fwd_np4_64K-64K.json",
                                "ring_fwd_np2_2K-2K.json", "ring_fwd_np2_512K-512K.json",
                                "ring_fwd_np4_2K-2K.json", "ring_fwd_np4_512K-512K.json"])
        table = p.stdout[p.stdout.index("# strong scaling"):]
        self.assertRegex(table, r"dilated fwd causal S=64K +100\.0% +95\.0% +85\.0%")
        self.assertRegex(table, r"fwd causal S=2K +100\.0% +95\.0% +85\.0%")
        self.assertNotIn("S=512K", table)  # no one-GPU reference there
        # Every run is timed at the settled clock (WARMUP_MS, default 300 ms of warm-up).
        for r in runs:
            with open(os.path.join(out, r)) as f:
                self.assertIn("--warmup-ms 300", json.load(f)["command_line"], r)
        p = subprocess.run(["/bin/bash", os.path.join(ROOT, "bench", "run_scaling_study.sh"), out],
                           capture_output=True, text=True, env=dict(e, WARMUP_MS="soon"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("WARMUP_MS must be a non-negative integer", p.stderr)


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
            self.assertEqual(plot.main([d, "--out", out, "--only", "tflops,bogus"]), 2)
            self.assertEqual(plot.main([d, "--out", out, "--suffix", "a/b"]), 2)

    def test_positional_plot_only_with_suffix(self):
        import plot
        times = {}
        for seq in (4096, 8192):
            for pss in ("fwd", "fwdbwd"):
                times[(pss, True, "none", seq)] = 1.0
                times[(pss, True, "rope", seq)] = 1.03
                times[(pss, True, "alibi", seq)] = 1.1
        s = self.write("s.json", bench_doc("dense", study_rows(times, share=2.5)))
        out = os.path.join(self.dir, "png2")
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main([s, "--out", out, "--dpi", "40", "--only", "positional", "--suffix", "_x"]), 0)
        self.assertEqual(os.listdir(out), ["positional_overhead_x.png"])
        panels = L.positional_panels(L.load([s]))
        self.assertEqual(list(panels), ["dense causal"])
        self.assertEqual(sorted(panels["dense causal"]), ["ALiBi fwd", "ALiBi fwdbwd", "RoPE fwd", "RoPE fwdbwd",
                                                          "RoPE kernel alone fwd", "RoPE kernel alone fwdbwd"])
        self.assertAlmostEqual(panels["dense causal"]["ALiBi fwd"][1][1], 10.0)


if __name__ == "__main__":
    unittest.main()
