#!/usr/bin/env python3
"""Ratio table (ours / each peer) and regression check of our own rates against a baseline.

  bench/compare.py RESULT.json|DIR [...] [--baseline OLD.json|DIR [...]] [--threshold 0.10]
  bench/compare.py --positional STUDY.json [--target 3]      # the positional overhead table only
  bench/compare.py --scaling RESULT.json|DIR [...]            # the strong-scaling table only (1, 2, 4 GPUs)

Inputs: side-by-side reports (bench/peers/merge_side_by_side.py), distattn_bench -J output and torch_peers.py /
torch_cp.py -J output, in any mix; a directory stands for its *.json files. All rows are pooled.

Ratio table: one block per job label (op, pass, causal, window, alibi, N GPUs), one line per shape and S; each
peer's cell is "rate (ours/peer x)"; > 1: distattn faster. TFLOPs per GPU for attention, GB/s for rope.

Positional overhead table (printed after the ratio table whenever the results hold one of our attention rows with
RoPE or ALiBi and the same row without; --positional prints only it): one block per attention job, one line per S:
the time without positional encoding, then per variant its time and overhead = time(variant) / time(none) - 1
(with RoPE also the share of the RoPE kernels timed alone, rope_ms / time); each block ends with the worst overhead
at S >= 8K per variant against the target (--target, default 3%).

Row key (bench/study_lib.py): op, pass, causal, window, alibi, rope, dtype, B, H, Hkv, D, ranks, rotary_dim, style, seq
(peers are matched to ours on these), plus layout for the regression check. Several rows of one key (the same
shape in two files) count as their median.

--baseline: every row of ours whose key is also in the baseline is compared; a row is a regression when
current / baseline - 1 < -threshold. Exit codes: 0 no regression; 1 a regression flagged; 2 bad input (a missing
file, unreadable JSON, an unknown format, or a baseline that shares no row key with the results).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_lib as L  # noqa: E402


def print_ratio_table(rows, out):
    groups = L.ratio_table(rows)
    for prov in L.provenance(rows):
        print(f"# source: {prov}", file=out)
    print("# ratio = ours / peer (rates; > 1: distattn faster)", file=out)
    for g in groups:
        print(f"# {g['label']}  [{g['unit']}]", file=out)
        head = f"{'seq':>8} {'shape':<20} {'distattn':>10}" + "".join(f" {p:>26}" for p in g["peers"])
        print(head, file=out)
        for ln in g["lines"]:
            ours = f"{ln['ours']:.1f}" if ln["ours"] is not None else "n/a"
            line = f"{ln['seq']:>8} {ln['shape']:<20} {ours:>10}"
            for p in g["peers"]:
                cell = ln["cells"].get(p)
                if cell is None:
                    text = "-"
                elif cell[0] is None:
                    text = "refused" if cell[2] and str(cell[2]).startswith("refused") else "error"
                elif cell[1] is None:
                    text = f"{cell[0]:.1f}"
                else:
                    text = f"{cell[0]:.1f} ({cell[1]:.2f}x)"
                line += f" {text:>26}"
            if ln["wrong"]:
                line += f"   ! {ln['wrong']} wrong values"
            print(line, file=out)
    return groups


def print_positional_table(rows, target_pct, out):
    """The overhead table (study_lib.positional_table); returns its groups (empty: nothing printed)."""
    groups = L.positional_table(rows, target_pct=target_pct)
    if not groups:
        return groups
    print(f"# positional encoding overhead = time(variant) / time(none) - 1; target < {target_pct:g}% at S >= "
          f"{L._kfmt(L.TARGET_MIN_SEQ)}; rope: RoPE fwd on q, k before attention (+ RoPE bwd on dq, dk after), "
          "share = the RoPE kernels timed alone / the variant's time", file=out)
    for g in groups:
        print(f"# {g['label']}  ({g['shape']})", file=out)
        head = f"{'seq':>8} {'none(ms)':>10}"
        for v in g["variants"]:
            head += f" {v + '(ms)':>12} {v + ' ovh':>11}" + (f" {'share':>7}" if "rope" in v else "")
        print(head, file=out)
        for ln in g["lines"]:
            line = f"{ln['seq']:>8} {ln['none_ms']:>10.4f}"
            for v in g["variants"]:
                cell = ln["cells"].get(v)
                if cell is None:
                    line += f" {'-':>12} {'-':>11}" + (f" {'-':>7}" if "rope" in v else "")
                    continue
                t, pct, share = cell
                line += f" {t:>12.4f} {pct:>+10.2f}%"
                if "rope" in v:
                    line += f" {share:>6.2f}%" if share is not None else f" {'n/a':>7}"
            print(line, file=out)
        for v in g["variants"]:
            worst, met = g["verdict"][v]
            if worst is None:
                print(f"#   {v}: no S >= {L._kfmt(L.TARGET_MIN_SEQ)} measured", file=out)
            else:
                print(f"#   {v}: worst overhead at S >= {L._kfmt(L.TARGET_MIN_SEQ)}: {worst:+.2f}% -> target "
                      f"< {target_pct:g}% {'met' if met else 'MISSED'}", file=out)
    return groups


def print_scaling_table(rows, out):
    """The strong-scaling table (study_lib.scaling): one line per series, efficiency at each N. False when empty."""
    sc = L.scaling(rows)
    if not sc:
        return False
    ns = sorted({n for pts in sc.values() for n, _ in pts})
    print("# strong scaling: efficiency = TFLOPs/GPU on N GPUs / TFLOPs on one GPU, same global S", file=out)
    print(f"{'series':<32}" + "".join(f"{'N=' + str(n):>9}" for n in ns), file=out)
    for name, pts in sc.items():
        d = dict(pts)
        print(f"{name:<32}" + "".join(f"{d[n] * 100:>8.1f}%" if n in d else f"{'-':>9}" for n in ns), file=out)
    return True


def print_regressions(matched, unmatched, threshold, out):
    print(f"# regression check: our rate now / baseline, flagged below -{threshold * 100:.1f}%", file=out)
    print(f"{'job':<28} {'seq':>8} {'shape':<20} {'baseline':>10} {'now':>10} {'change':>8}", file=out)
    for m in matched:
        flag = "  REGRESSION" if m["flagged"] else ""
        print(f"{m['label']:<28} {m['seq']:>8} {m['shape']:<20} {m['base']:>10.1f} {m['cur']:>10.1f}"
              f" {m['change'] * 100:>+7.1f}%{flag}", file=out)
    if unmatched:
        print(f"# {len(unmatched)} row(s) of ours have no baseline row with the same key (not checked)", file=out)
    n = sum(m["flagged"] for m in matched)
    print(f"# {n} regression(s) in {len(matched)} compared row(s)", file=out)
    return n


def main(argv=None, out=sys.stdout):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="result JSON files or directories of them")
    ap.add_argument("--baseline", nargs="+", default=None, help="baseline JSON files or directories")
    ap.add_argument("--threshold", type=float, default=0.10,
                    help="regression threshold as a fraction of the baseline rate (default 0.10 = 10%%)")
    ap.add_argument("--no-table", action="store_true", help="skip the ratio table")
    ap.add_argument("--positional", action="store_true",
                    help="print only the positional overhead table (exit 2 when the results hold no pair)")
    ap.add_argument("--scaling", action="store_true",
                    help="print only the strong-scaling table (exit 2 when the results hold no multi-GPU series with a "
                         "one-GPU reference)")
    ap.add_argument("--target", type=float, default=L.TARGET_PCT,
                    help="positional overhead target in %% at S >= 8K (default %(default)s)")
    args = ap.parse_args(argv)
    if not 0 <= args.threshold < 1:
        print(f"compare: --threshold {args.threshold}: expected a fraction in [0, 1)", file=sys.stderr)
        return 2
    try:
        rows = L.load(args.results)
        base = L.load(args.baseline) if args.baseline else None
    except L.StudyError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"compare: no rows in {' '.join(args.results)}", file=sys.stderr)
        return 2
    if args.scaling:
        if not print_scaling_table(rows, out):
            print(f"compare: no multi-GPU series with a one-GPU reference in {' '.join(args.results)}", file=sys.stderr)
            return 2
        return 0
    if args.positional:
        if not print_positional_table(rows, args.target, out):
            print(f"compare: no positional pair (a row with RoPE or ALiBi and the same row without) in "
                  f"{' '.join(args.results)}", file=sys.stderr)
            return 2
        return 0
    if not args.no_table:
        print_ratio_table(rows, out)
        print_positional_table(rows, args.target, out)
    if base is None:
        return 0
    matched, unmatched = L.regressions(rows, base, args.threshold)
    if not matched:
        print(f"compare: the baseline ({' '.join(args.baseline)}) shares no row key with the results: nothing "
              "compared", file=sys.stderr)
        return 2
    devs = {r["device"] for r in rows if r["impl"] == L.OURS} | {r["device"] for r in base if r["impl"] == L.OURS}
    if len(devs) > 1:
        print(f"# warning: results and baseline come from different devices ({', '.join(sorted(map(str, devs)))})",
              file=out)
    keys = {m["key"] for m in matched}
    warm_now = sorted({r["warmup_ms"] for r in rows if r["impl"] == L.OURS and L.row_key(r) in keys})
    warm_base = sorted({r["warmup_ms"] for r in base if r["impl"] == L.OURS and L.row_key(r) in keys})
    if warm_now != warm_base:
        print(f"# warning: results and baseline were timed after different warm-ups (--warmup-ms "
              f"{'/'.join(map(str, warm_now))} now, {'/'.join(map(str, warm_base))} in the baseline): on an H200 a "
              "short run can time the boost clock and a warmed one the capped clock, up to ~8% apart "
              "(bench/README.md, \"Clocks and warm-up\")", file=out)
    return 1 if print_regressions(matched, unmatched, args.threshold, out) else 0


if __name__ == "__main__":
    sys.exit(main())
