"""Shared loading and normalising of benchmark result JSON for bench/compare.py and bench/plot.py.

No third-party imports: the data handling is unit-tested where matplotlib is absent.

Formats read (detected from the top-level keys, anything else is a StudyError naming the file):
  * side_by_side  - bench/peers/merge_side_by_side.py output: {"kind": "side_by_side", "jobs": [...],
                    "rows": [flat rows, each with "peer" and "job"]}; a row's op comes from its job.
  * bench         - distattn_bench -J: {"op", "rows", "peer": "distattn", ...}; every row is ours.
  * peers         - bench/peers/torch_peers.py / torch_cp.py -J: {"peer_suite", "op", "rows"}; rows carry "peer".
A directory argument stands for every *.json directly in it (sorted).

Every row becomes a flat dict ("normalised row") with these fields:
  impl      "distattn" for ours, else the peer's name (torch-flash, torch-context-parallel, ...)
  op        dense | ring | rope | ... (the bench operation)
  pass, causal, window, alibi, B, H, Hkv, D, dtype, ranks, seq, layout, rotary_dim, style
            the shape; defaults where a tool leaves a field out: pass "fwd" (None for rope), causal/alibi False,
            window 0, B 1, Hkv = H, ranks 1, layout None
  rate, unit   tflops (TFLOPs per GPU) when given, else gbps (GB/s); None when the run refused / errored
  time_ms, compute_ms, exposed_comm_ms, exposed_comm_pct, wrong, error
  job       the job name of a side-by-side report (None otherwise); label: our own job label (see label_of)
  source, device, date, commit   where the row came from (file, its device, date and git commit)

Keys (the row matching rule, used by both tools):
  SHAPE_FIELDS = (op, pass, causal, window, alibi, dtype, B, H, Hkv, D, ranks, rotary_dim, style, seq)
  peer_key(row) = SHAPE_FIELDS values: ours and a peer are the same job when these agree (the layout is
                  left out: PyTorch's context_parallel balances head-tail, ours zigzag, same global problem).
  row_key(row)  = peer_key + (layout,): the regression key; our rate at one key is compared with the
                  baseline's rate at the same key. Several rows of one (impl, key) - e.g. the same shape in two
                  files - are reduced to their median rate.
"""
import glob
import json
import os
import statistics

OURS = "distattn"
SHAPE_FIELDS = ("op", "pass", "causal", "window", "alibi", "dtype", "B", "H", "Hkv", "D", "ranks", "rotary_dim",
                "style", "seq")
KEY_FIELDS = SHAPE_FIELDS + ("layout",)


class StudyError(Exception):
    """Bad input (a missing file, unreadable JSON, an unknown format): the tools exit 2 with this message."""


def _expand(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.json")))
            if not found:
                raise StudyError(f"{p}: directory holds no *.json result file")
            out.extend(found)
        elif not os.path.exists(p):
            raise StudyError(f"{p}: no such file")
        else:
            out.append(p)
    return out


def detect_format(doc):
    """'side_by_side', 'bench', 'peers' or None for a parsed JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return None
    if doc.get("kind") == "side_by_side" and isinstance(doc.get("jobs"), list):
        return "side_by_side"
    if "peer_suite" in doc and "op" in doc:
        return "peers"
    if doc.get("peer") == OURS and "op" in doc:
        return "bench"
    return None


def _normalise(raw, op, impl, job, meta, source, report_ranks):
    if not isinstance(raw, dict) or "seq" not in raw:
        raise StudyError(f"{source}: a row without 'seq' ({str(raw)[:80]})")
    is_rope = op == "rope"
    H = raw.get("H")
    D = raw.get("D")
    row = {
        "impl": impl,
        "op": op,
        "pass": raw.get("pass", None if is_rope else "fwd"),
        "causal": bool(raw.get("causal", False)),
        "window": int(raw.get("window") or 0),
        "alibi": bool(raw.get("alibi", False)),
        "dtype": raw.get("dtype"),
        "B": int(raw.get("B", 1)),
        "H": H,
        "Hkv": raw.get("Hkv", H),
        "D": D,
        "ranks": int(raw.get("ranks", report_ranks or 1)),
        "rotary_dim": raw.get("rotary_dim", D if is_rope else None),
        "style": raw.get("style") if is_rope else None,
        "seq": int(raw["seq"]),
        "layout": raw.get("layout"),
        "time_ms": raw.get("time_ms"),
        "compute_ms": raw.get("compute_ms"),
        "exposed_comm_ms": raw.get("exposed_comm_ms"),
        "exposed_comm_pct": raw.get("exposed_comm_pct"),
        "wrong": raw.get("wrong"),
        "error": raw.get("error"),
        "job": job,
        "source": source,
        "device": meta.get("device"),
        "date": meta.get("date"),
        "commit": meta.get("git_commit"),
    }
    if row["ranks"] <= 1:
        row["layout"] = None  # one GPU: no sharding layout, whatever a tool wrote
    if raw.get("tflops") is not None:
        row["rate"], row["unit"] = float(raw["tflops"]), "TFLOPs"
    elif raw.get("gbps") is not None:
        row["rate"], row["unit"] = float(raw["gbps"]), "GB/s"
    else:
        row["rate"], row["unit"] = None, ("GB/s" if is_rope else "TFLOPs")
    row["label"] = label_of(row)
    return row


def rows_of(doc, source):
    """Normalised rows of one parsed document (see the module doc); StudyError on an unknown format."""
    fmt = detect_format(doc)
    if fmt is None:
        raise StudyError(f"{source}: unknown result format (expected a side-by-side report from "
                         "merge_side_by_side.py, distattn_bench -J output or torch_peers/torch_cp -J output)")
    meta = {k: doc.get(k) for k in ("device", "date", "git_commit")}
    rows = []
    if fmt == "side_by_side":
        job_op = {j.get("name"): j.get("op") for j in doc["jobs"]}
        job_ranks = {j.get("name"): (j.get("options") or {}).get("ranks") for j in doc["jobs"]}
        for r in doc["rows"]:
            job = r.get("job") if isinstance(r, dict) else None
            op = (r.get("op") if isinstance(r, dict) else None) or job_op.get(job)
            if op is None:
                raise StudyError(f"{source}: row of job {job!r} has no op (not in the report's jobs)")
            rows.append(_normalise(r, op, r.get("peer", OURS), job, meta, source, job_ranks.get(job)))
    else:
        for r in doc["rows"]:
            impl = (r.get("peer") if isinstance(r, dict) else None) or (OURS if fmt == "bench" else None)
            if impl is None:
                raise StudyError(f"{source}: peers row without 'peer'")
            rows.append(_normalise(r, doc["op"], impl, None, meta, source, doc.get("ranks")))
    return rows


def load(paths):
    """Normalised rows of every file (directories expanded); StudyError on any bad input."""
    rows = []
    for path in _expand(paths):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise StudyError(f"{path}: cannot read JSON ({e})") from None
        rows.extend(rows_of(doc, path))
    return rows


def label_of(row):
    """Our job label: op, pass, mask and positional options and GPU count, e.g. 'ring fwd causal N=2'."""
    parts = [row["op"]]
    if row["pass"]:
        parts.append(row["pass"])
    if row["causal"]:
        parts.append("causal")
    if row["window"]:
        parts.append(f"window={row['window']}")
    if row["alibi"]:
        parts.append("alibi")
    if row["ranks"] > 1:
        parts.append(f"N={row['ranks']}")
    return " ".join(parts)


def shape_str(row):
    s = f"B{row['B']} H{row['H']}"
    if row["Hkv"] != row["H"]:
        s += f"/{row['Hkv']}"
    return s + f" D{row['D']} {row['dtype']}"


def peer_key(row):
    return tuple(row[f] for f in SHAPE_FIELDS)


def row_key(row):
    return tuple(row[f] for f in KEY_FIELDS)


def key_str(key, fields=KEY_FIELDS):
    return " ".join(f"{f}={v}" for f, v in zip(fields, key) if v is not None)


def reduce_rates(rows, keyfn):
    """{(impl, key): median rate} over the rows that have a rate."""
    acc = {}
    for r in rows:
        if r["rate"] is not None:
            acc.setdefault((r["impl"], keyfn(r)), []).append(r["rate"])
    return {k: statistics.median(v) for k, v in acc.items()}


def ratio_table(rows):
    """Ours / each peer per (label, shape key).

    Returns a list of groups {label, unit, peers: [names], lines: [{seq, shape, ours, cells: {peer: (rate, ratio,
    error)}}]} sorted by label then shape then seq; a peer cell's ratio is ours / peer (> 1: distattn faster),
    None when either side has no rate; error is the peer's error/refusal text. Keys with no row of ours are
    left out (nothing to compare with).
    """
    by_key = {}
    for r in rows:
        by_key.setdefault(peer_key(r), []).append(r)
    groups = {}
    for key, rs in by_key.items():
        ours = [r for r in rs if r["impl"] == OURS]
        if not ours:
            continue
        ours_rates = [r["rate"] for r in ours if r["rate"] is not None]
        ours_rate = statistics.median(ours_rates) if ours_rates else None
        first = ours[0]
        g = groups.setdefault(first["label"], {"label": first["label"], "unit": first["unit"], "peers": [],
                                               "lines": []})
        per_peer = {}
        for r in rs:
            if r["impl"] == OURS:
                continue
            if r["impl"] not in g["peers"]:
                g["peers"].append(r["impl"])
            per_peer.setdefault(r["impl"], []).append(r)
        cells = {}
        for impl, prs in per_peer.items():
            rates = [r["rate"] for r in prs if r["rate"] is not None]
            rate = statistics.median(rates) if rates else None
            ratio = ours_rate / rate if (ours_rate and rate) else None
            errors = [r["error"] for r in prs if r["error"]]
            cells[impl] = (rate, ratio, None if rate is not None else (errors[0] if errors else "no rate"))
        g["lines"].append({"seq": first["seq"], "shape": shape_str(first), "ours": ours_rate, "cells": cells,
                           "wrong": sum(int(r["wrong"] or 0) for r in ours)})
    out = sorted(groups.values(), key=lambda g: g["label"])
    for g in out:
        g["lines"].sort(key=lambda ln: (ln["shape"], ln["seq"]))
    return out


def regressions(current, baseline, threshold):
    """Our rate per row_key in `current` against `baseline` (median per key on each side).

    Returns (matched, unmatched_keys): matched is a list of {key, label, seq, base, cur, change, flagged} where
    change = cur / base - 1 and flagged = change < -threshold (threshold a fraction, 0.10 = 10%).
    """
    cur = {k[1]: v for k, v in reduce_rates([r for r in current if r["impl"] == OURS], row_key).items()}
    base = {k[1]: v for k, v in reduce_rates([r for r in baseline if r["impl"] == OURS], row_key).items()}
    label = {row_key(r): r["label"] for r in current}
    shape = {row_key(r): shape_str(r) for r in current}
    matched, unmatched = [], []
    for key in sorted(cur, key=lambda k: tuple(str(x) for x in k)):
        if key not in base:
            unmatched.append(key)
            continue
        change = cur[key] / base[key] - 1.0
        matched.append({"key": key, "label": label[key], "seq": key[KEY_FIELDS.index("seq")],
                        "shape": shape[key], "base": base[key],
                        "cur": cur[key], "change": change, "flagged": change < -threshold})
    matched.sort(key=lambda m: (m["label"], m["shape"], m["seq"]))
    return matched, unmatched


# ----- plot data (pure: tested without matplotlib) -----

def provenance(rows):
    """Sorted unique 'device, date, commit' strings of the rows' sources."""
    seen = []
    for r in rows:
        s = f"{r['device']}, {(r['date'] or '?')[:10]}, commit {r['commit']}"
        if s not in seen:
            seen.append(s)
    return sorted(seen)


def tflops_series(rows):
    """{panel title: {impl: [(seq, TFLOPs)]}} for the TFLOPs ops (one panel per label and shape); peers included.

    Rows without a rate (refused) are left out; duplicates at one seq are reduced to their median.
    """
    att = [r for r in rows if r["unit"] == "TFLOPs"]
    shapes = {}
    for r in att:
        shapes.setdefault(r["label"], set()).add(shape_str(r))
    acc = {}
    for r in att:
        if r["rate"] is None:
            continue
        title = r["label"] + (f" ({shape_str(r)})" if len(shapes[r["label"]]) > 1 else "")
        acc.setdefault(title, {}).setdefault(r["impl"], {}).setdefault(r["seq"], []).append(r["rate"])
    return {t: {impl: sorted((s, statistics.median(v)) for s, v in pts.items()) for impl, pts in impls.items()}
            for t, impls in sorted(acc.items())}


def ring_split(rows):
    """{label: [(seq, time_ms, compute_ms, exposed_ms, {peer: time_ms})]} for our rows that carry compute_ms."""
    out = {}
    peer_times = {}
    for r in rows:
        if r["impl"] != OURS and r["time_ms"] is not None and r["rate"] is not None:
            peer_times.setdefault(peer_key(r), {})[r["impl"]] = r["time_ms"]
    for r in rows:
        if r["impl"] == OURS and r["compute_ms"] is not None and r["time_ms"] is not None:
            exp = r["exposed_comm_ms"] if r["exposed_comm_ms"] is not None else r["time_ms"] - r["compute_ms"]
            out.setdefault(r["label"], []).append((r["seq"], r["time_ms"], r["compute_ms"], exp,
                                                    peer_times.get(peer_key(r), {})))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in sorted(out.items())}


_SCALE_FIELDS = ("pass", "causal", "window", "alibi", "dtype", "B", "H", "Hkv", "D", "seq")


def scaling(rows, used=None):
    """Strong-scaling efficiency of ours: TFLOPs/GPU on N GPUs / TFLOPs of one GPU at the same global problem.

    One-GPU reference: our dense row (ranks 1) of the same pass, mask, shape and global S (a ring row with
    ranks 1 if there is no dense one). Efficiency = T1 / (N * TN) = (TFLOPs/GPU at N) / TFLOPs at 1.
    Returns {series "pass[ causal] S=..": [(N, efficiency)]} for series with a reference and at least one N > 1;
    N = 1 appears as (1, 1.0). `used`, a list, receives the rows the result was computed from.
    """
    ours = [r for r in rows if r["impl"] == OURS and r["rate"] is not None and r["unit"] == "TFLOPs"]
    one = {}
    for pref in ("ring", "dense"):  # dense overwrites ring: the plain kernel is the reference
        for k, v in reduce_rates([r for r in ours if r["op"] == pref and r["ranks"] == 1],
                                 lambda r: tuple(r[f] for f in _SCALE_FIELDS)).items():
            one[k[1]] = v
    multi = reduce_rates([r for r in ours if r["op"] == "ring" and r["ranks"] > 1],
                         lambda r: (r["ranks"],) + tuple(r[f] for f in _SCALE_FIELDS))
    out = {}
    for (_, k), rate in multi.items():
        n, sk = k[0], k[1:]
        if sk not in one:
            continue
        if used is not None:
            used.extend(r for r in ours if tuple(r[f] for f in _SCALE_FIELDS) == sk and r["ranks"] in (1, n))
        d = dict(zip(_SCALE_FIELDS, sk))
        name = f"{d['pass']}{' causal' if d['causal'] else ''}{' alibi' if d['alibi'] else ''} S={_kfmt(d['seq'])}"
        pts = out.setdefault(name, {1: 1.0})
        pts[n] = rate / one[sk]
    return {k: sorted(v.items()) for k, v in sorted(out.items(), key=lambda kv: _series_order(kv[0]))}


def _series_order(name):
    head, _, s = name.rpartition(" S=")
    return (head, _kparse(s))


def _kfmt(n):
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def _kparse(s):
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(s.rstrip("KM")) * mult


def positional(rows, used=None):
    """Positional-encoding overhead of ours, in % of the same attention without it.

    ALiBi: time(alibi) / time(no alibi) - 1 for two of our rows equal in every row_key field but alibi.
    RoPE (a separate kernel on q and k before attention): time(rope) / time(attention) for our rope row and
    our plain forward attention row (no ALiBi, no window, one GPU) of the same S, B, H, Hkv, D, dtype.
    Returns {series: [(seq, percent)]}, e.g. 'ALiBi: dense fwd causal', 'RoPE: dense fwd causal'. `used`, a list,
    receives the rows the result was computed from.
    """
    ours = [r for r in rows if r["impl"] == OURS and r["time_ms"] is not None]
    times = {}
    for r in ours:
        times.setdefault(row_key(r), []).append(r["time_ms"])
    med = {k: statistics.median(v) for k, v in times.items()}
    ai = KEY_FIELDS.index("alibi")
    out = {}
    for k, t in med.items():
        if not k[ai]:
            continue
        plain = k[:ai] + (False,) + k[ai + 1:]
        if plain in med:
            if used is not None:
                used.extend(r for r in ours if row_key(r) in (k, plain))
            d = dict(zip(KEY_FIELDS, k))
            lab = label_of(dict(d, alibi=False))
            out.setdefault(f"ALiBi: {lab}", []).append((d["seq"], (t / med[plain] - 1.0) * 100.0))
    attn = {}
    for r in ours:
        # Forward passes only: a training step also rotates dq and dk back, which the rope row does not time.
        if r["op"] == "dense" and r["pass"] == "fwd" and r["ranks"] == 1 and not r["alibi"] and not r["window"]:
            attn.setdefault((r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]), {}).setdefault(
                r["label"], []).append(r["time_ms"])
    rope = {}
    for r in ours:
        if r["op"] == "rope":
            rope.setdefault((r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]), []).append(r["time_ms"])
    for k, rt in rope.items():
        for lab, at in attn.get(k, {}).items():
            if used is not None:
                used.extend(r for r in ours if (r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]) == k and
                            (r["op"] == "rope" or r["label"] == lab))
            out.setdefault(f"RoPE: {lab}", []).append(
                (k[0], statistics.median(rt) / statistics.median(at) * 100.0))
    return {k: sorted(v) for k, v in sorted(out.items())}
