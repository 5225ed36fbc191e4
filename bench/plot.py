#!/usr/bin/env python3
"""PNG plots of benchmark result JSON (matplotlib, Agg backend).

  bench/plot.py RESULT.json|DIR [...] --out DIR [--dpi 100]

Inputs as for bench/compare.py (side-by-side reports, distattn_bench -J, torch_peers/torch_cp -J; a directory
stands for its *.json files); all rows are pooled. Plots written when their data is present (otherwise a
message and no file; the exit code stays 0):
  tflops_vs_seq.png        TFLOPs per GPU against S (log-2 axis), one panel per job, ours and every peer
  ring_time_split.png      ring: each S's time split into compute (comp) and exposed communication (exp)
  scaling_efficiency.png   TFLOPs/GPU on N GPUs over one GPU's (dense) at the same global S, against N
  positional_overhead.png  ALiBi against no ALiBi; RoPE kernel time against the attention it feeds
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


def plot_tflops(rows, out, dpi):
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
    return _save(fig, os.path.join(out, "tflops_vs_seq.png"), dpi)


def plot_ring_split(rows, out, dpi):
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
    return _save(fig, os.path.join(out, "ring_time_split.png"), dpi)


def plot_scaling(rows, out, dpi):
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
    return _save(fig, os.path.join(out, "scaling_efficiency.png"), dpi)


def plot_positional(rows, out, dpi):
    used = []
    pos = L.positional(rows, used)
    if not pos:
        print("plot: positional_overhead skipped: needs rows with and without ALiBi (same shape), or rope rows "
              "and dense rows of the same S and shape")
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs_all = sorted({x for pts in pos.values() for x, _ in pts})
    for name, pts in pos.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=name)
        for x, y in pts:
            ax.annotate(f"{y:.1f}%", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ax.axhline(3.0, color="#2ca02c", lw=0.9, ls="--", label="3% target")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs_all)
    ax.set_xticklabels([_kfmt(x) for x in xs_all])
    ax.minorticks_off()
    ax.set_ylim(bottom=0, top=max(5.0, max(y for pts in pos.values() for _, y in pts) * 1.25))
    ax.set_xlabel("sequence length S")
    ax.set_ylabel("overhead, % of attention without it")
    ax.set_title("Positional encoding overhead (distattn)\nALiBi: time with / without - 1;  RoPE: rope kernel "
                 "time / attention time", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footnote(fig, used)
    return _save(fig, os.path.join(out, "positional_overhead.png"), dpi)


PLOTS = (plot_tflops, plot_ring_split, plot_scaling, plot_positional)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="result JSON files or directories of them")
    ap.add_argument("--out", required=True, help="output folder for the PNGs (created)")
    ap.add_argument("--dpi", type=int, default=100)
    args = ap.parse_args(argv)
    try:
        rows = L.load(args.results)
    except L.StudyError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    try:
        _plt()
    except ImportError as e:
        print(f"plot: matplotlib is needed ({e}); pip install matplotlib", file=sys.stderr)
        return 3
    os.makedirs(args.out, exist_ok=True)
    for fn in PLOTS:
        fn(rows, args.out, args.dpi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
