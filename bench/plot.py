#!/usr/bin/env python3
"""PNG plots of benchmark result JSON (matplotlib, Agg backend).

  bench/plot.py RESULT.json|DIR [...] --out DIR [--dpi 100] [--only positional,...] [--suffix _h100] [--newest]

Inputs as for bench/compare.py (side-by-side reports, distattn_bench -J, torch_peers/torch_cp -J, the report of
bench/run_positional_study.sh; a directory stands for its *.json files); all rows are pooled (median per point),
or with --newest only the newest run of each point is kept (results of several commits side by side). Plots written when
their data is present (otherwise a message and no file; the exit code stays 0):
  tflops_vs_seq.png        TFLOPs per GPU against S (log-2 axis), one panel per job, ours and every peer
  ring_time_split.png      ring: each S's time split into compute (comp) and exposed communication (exp)
  scaling_efficiency.png   TFLOPs/GPU on N GPUs over one GPU's (dense) at the same global S, against N
  positional_overhead.png  overhead % = time with / time without - 1 against S: one panel per attention job
                           (dense causal, dense non-causal), one line per variant and pass (RoPE fwd, ALiBi fwdbwd,
                           ...), 3% and 5% guide lines; thin lines: the RoPE kernels timed alone, % of the step
Every figure's footnote names the device, date and commit of the data it shows. Exit 2 on bad input
(missing file, unknown format), 3 when matplotlib is missing.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_lib as L  # noqa: E402

_COLORS = {L.OURS: "#d62728"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _footnote(fig, rows):
    fig.text(0.01, 0.005, "data: " + "; ".join(L.provenance(rows)), fontsize=7, color="#555555", ha="left",
             va="bottom")


def _kfmt(n):
    return L._kfmt(int(n))


def _grid(n):
    cols = min(n, 3)
    return int(math.ceil(n / cols)), cols


def _save(fig, path, dpi):
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    print(f"plot: wrote {path}")
    return path


def plot_tflops(rows, out, dpi, suffix=""):
    series = L.tflops_series(rows)
    if not series:
        print("plot: tflops_vs_seq skipped: no TFLOPs rows")
        return None
    plt = _plt()
    nr, nc = _grid(len(series))
    fig, axes = plt.subplots(nr, nc, figsize=(4.6 * nc, 3.4 * nr + 0.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    impls = sorted({i for s in series.values() for i in s if i != L.OURS})
    colors = dict(_COLORS, **{i: cmap((k + 1) % 10 if (k + 1) % 10 != 3 else 9) for k, i in enumerate(impls)})
    # Peers that answered with no rate at shapes where we have one (e.g. context_parallel refusing non-causal).
    refused = {}
    for r in rows:
        if r["unit"] == "TFLOPs" and r["rate"] is None and r["impl"] != L.OURS:
            for title in series:
                if title == r["label"] or title.startswith(r["label"] + " ("):
                    refused.setdefault(title, set()).add(r["impl"])
    for ax, (title, by_impl) in zip(axes.flat, series.items()):
        for impl in [L.OURS] + impls:
            if impl not in by_impl:
                continue
            xs, ys = zip(*by_impl[impl])
            ax.plot(xs, ys, marker="o", ms=4, lw=2.2 if impl == L.OURS else 1.3, color=colors[impl], label=impl)
        ax.set_xscale("log", base=2)
        xs_all = sorted({x for pts in by_impl.values() for x, _ in pts})
        ax.set_xticks(xs_all)
        ax.set_xticklabels([_kfmt(x) for x in xs_all], fontsize=8)
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("sequence length S (global)", fontsize=8)
        ax.set_ylabel("TFLOPs per GPU", fontsize=8)
        # Head room above the highest line for the legend, so that it hides no point.
        ax.set_ylim(0, 1.4 * max(y for pts in by_impl.values() for _, y in pts))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", ncol=2, framealpha=0.9)
        if refused.get(title):
            ax.text(0.02, 0.02, "no rate (refused/error): " + ", ".join(sorted(refused[title])),
                    transform=ax.transAxes, fontsize=7, color="#555555", va="bottom")
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle("Attention TFLOPs per GPU against sequence length: distattn and peers", fontsize=12)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    _footnote(fig, [r for r in rows if r["unit"] == "TFLOPs"])
    return _save(fig, os.path.join(out, f"tflops_vs_seq{suffix}.png"), dpi)


def plot_ring_split(rows, out, dpi, suffix=""):
    split = L.ring_split(rows)
    if not split:
        print("plot: ring_time_split skipped: no rows with compute_ms (distattn_bench -o ring)")
        return None
    plt = _plt()
    nr, nc = _grid(len(split))
    fig, axes = plt.subplots(nr, nc, figsize=(4.6 * nc, 3.6 * nr + 0.4), squeeze=False)
    for ax, (label, pts) in zip(axes.flat, split.items()):
        xs = range(len(pts))
        comp = [100.0 * c / t for _, t, c, _, _ in pts]
        exp = [100.0 * e / t for _, t, _, e, _ in pts]
        ax.bar(xs, comp, color="#1f77b4", label="compute (comp)")
        ax.bar(xs, exp, bottom=comp, color="#ff7f0e", label="exposed comm (exp)")
        for x, (seq, t, c, e, peers) in zip(xs, pts):
            text = f"{t:.1f} ms"
            for name, pt in peers.items():
                text += f"\n{name.replace('torch-context-parallel', 'torch CP')}: {pt:.1f}"
            ax.text(x, 101, text, ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([_kfmt(p[0]) for p in pts])
        ax.set_ylim(0, 125)
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_xlabel("global sequence length S", fontsize=8)
        ax.set_ylabel("% of the ring call's time", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(split):]:
        ax.axis("off")
    fig.suptitle("Ring attention: compute and exposed communication (total time above each bar)", fontsize=12)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    _footnote(fig, [r for r in rows if r["compute_ms"] is not None])
    return _save(fig, os.path.join(out, f"ring_time_split{suffix}.png"), dpi)


def plot_scaling(rows, out, dpi, suffix=""):
    used = []
    sc = L.scaling(rows, used)
    if not sc:
        print("plot: scaling_efficiency skipped: needs ring rows on N > 1 GPUs and one-GPU rows of the same shape")
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ns = sorted({n for pts in sc.values() for n, _ in pts})
    for i, (name, pts) in enumerate(sc.items()):
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, marker="o", label=name)
        # Labels of close end points are spread horizontally so that they stay readable.
        ax.annotate(f"{ys[-1]:.2f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(6 + 24 * (i % 3), 0),
                    fontsize=7, va="center", color=line.get_color())
    ax.axhline(1.0, color="#888888", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.5)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("number of GPUs N")
    ax.set_ylabel("efficiency = (TFLOPs/GPU on N) / (TFLOPs on 1)")
    ax.set_title("Strong scaling of distattn ring attention (same global S)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footnote(fig, used)
    return _save(fig, os.path.join(out, f"scaling_efficiency{suffix}.png"), dpi)


_VARIANT_COLORS = {"RoPE": "#1f77b4", "ALiBi": "#d62728", "RoPE+ALiBi": "#9467bd", "RoPE kernel alone": "#17becf"}
_PASS_STYLES = {"fwd": "-", "bwd": ":", "fwdbwd": "--"}


def plot_positional(rows, out, dpi, suffix=""):
    used = []
    panels = L.positional_panels(rows, used)
    if not panels:
        print("plot: positional_overhead skipped: needs rows with and without RoPE / ALiBi (same shape), or rope "
              "rows and dense rows of the same S and shape")
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8), squeeze=False)
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        xs_all = sorted({x for pts in lines.values() for x, _ in pts})
        ys_all = [y for pts in lines.values() for _, y in pts]
        for name, pts in lines.items():
            variant, _, pss = name.rpartition(" ")
            xs, ys = zip(*pts)
            alone = variant == "RoPE kernel alone"  # a share, not a with/without difference: thin, no value labels
            line, = ax.plot(xs, ys, marker="x" if alone else "o", ms=4, lw=0.9 if alone else 1.6,
                            ls=_PASS_STYLES.get(pss, "-."), color=_VARIANT_COLORS.get(variant),
                            label=name + (" (share)" if alone else ""))
            if alone:
                continue
            # Values at the target's first S and at the largest S: the two numbers the study is read for.
            for x, y in pts:
                if x == L.TARGET_MIN_SEQ or x == xs[-1]:
                    ax.annotate(f"{y:+.1f}%", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7,
                                ha="center", color=line.get_color())
        ax.axhline(L.TARGET_PCT, color="#2ca02c", lw=1.0, ls="--", label=f"{L.TARGET_PCT:g}% target")
        ax.axhline(5.0, color="#ff7f0e", lw=1.0, ls=":", label="5%")
        ax.axhline(0.0, color="#888888", lw=0.6)
        if xs_all[-1] >= L.TARGET_MIN_SEQ:
            ax.axvspan(L.TARGET_MIN_SEQ / 1.25, xs_all[-1] * 1.25, color="#2ca02c", alpha=0.04)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.set_xticklabels([_kfmt(x) for x in xs_all])
        ax.minorticks_off()
        ax.set_xlim(xs_all[0] / 1.25, xs_all[-1] * 1.25)
        lo, hi = min(ys_all + [0.0]), max(ys_all + [5.0])
        ax.set_ylim(lo - 0.08 * (hi - lo) - 0.5, hi + 0.15 * (hi - lo))
        ax.set_xlabel("sequence length S")
        ax.set_ylabel("overhead, % of the same attention without it")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Positional encoding overhead (distattn): time with / time without - 1 (shaded: S >= "
                 f"{_kfmt(L.TARGET_MIN_SEQ)}, the target range)", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _footnote(fig, used)
    return _save(fig, os.path.join(out, f"positional_overhead{suffix}.png"), dpi)


PLOTS = {"tflops": plot_tflops, "ring": plot_ring_split, "scaling": plot_scaling, "positional": plot_positional}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="result JSON files or directories of them")
    ap.add_argument("--out", required=True, help="output folder for the PNGs (created)")
    ap.add_argument("--dpi", type=int, default=100)
    ap.add_argument("--only", default=None,
                    help="comma-separated plots to draw: " + ", ".join(PLOTS) + " (default: every one)")
    ap.add_argument("--suffix", default="", help="appended to every file name, e.g. _h100 -> tflops_vs_seq_h100.png")
    ap.add_argument("--newest", action="store_true",
                    help="keep only the newest run of every point (impl, device, shape, S): older commits' rows of "
                         "the same point are dropped instead of pooled")
    args = ap.parse_args(argv)
    names = list(PLOTS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PLOTS]
    if unknown or not names:
        print(f"plot: --only {args.only!r}: unknown plot(s) {', '.join(unknown)} (known: {', '.join(PLOTS)})",
              file=sys.stderr)
        return 2
    if "/" in args.suffix:
        print(f"plot: --suffix {args.suffix!r} must not contain '/'", file=sys.stderr)
        return 2
    try:
        rows = L.load(args.results)
    except L.StudyError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    if args.newest:
        kept = L.newest_only(rows)
        print(f"plot: --newest kept {len(kept)} of {len(rows)} rows")
        rows = kept
    try:
        _plt()
    except ImportError as e:
        print(f"plot: matplotlib is needed ({e}); pip install matplotlib", file=sys.stderr)
        return 3
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        PLOTS[name](rows, args.out, args.dpi, args.suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
