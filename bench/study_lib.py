"""Shared loading and normalising of benchmark result JSON for bench/compare.py and bench/plot.py.

No third-party imports: the data handling is unit-tested where matplotlib is absent.

Formats read (detected from the top-level keys, anything else is a StudyError naming the file):
  * side_by_side  - bench/peers/merge_side_by_side.py output: {"kind": "side_by_side", "jobs": [...],
                    "rows": [flat rows, each with "peer" and "job"]}; a row's op comes from its job.
  * bench         - distattn_bench -J: {"op", "rows", "peer": "distattn", ...}; every row is ours.
  * peers         - bench/peers/torch_peers.py / torch_cp.py -J: {"peer_suite", "op", "rows"}; rows carry "peer".
  * positional_study - bench/run_positional_study.sh's merged report (merge_positional below):
                    {"kind": "positional_study", "runs": [...], "rows": [distattn_bench dense rows, each with "op"]}.
A directory argument stands for every *.json directly in it (sorted).

Every row becomes a flat dict ("normalised row") with these fields:
  impl      "distattn" for ours, else the peer's name (torch-flash, torch-context-parallel, ...)
  op        dense | ring | rope | ... (the bench operation)
  pass, causal, window, alibi, rope, B, H, Hkv, D, dtype, ranks, seq, layout, rotary_dim, style
            the shape; defaults where a tool leaves a field out: pass "fwd" (None for rope), causal/alibi False,
            window 0, B 1, Hkv = H, ranks 1, layout None. rope: attention wrapped in the RoPE kernels (distattn_bench
            -o dense|ring --rope; False otherwise, also for the rope op itself); rotary_dim/style: the rope op's, or
            a dense / ring row's with rope, else None
  rate, unit   tflops (TFLOPs per GPU) when given, else gbps (GB/s); None when the run refused / errored
  time_ms, compute_ms, exposed_comm_ms, exposed_comm_pct, wrong, error
  rope_ms, rope_share_pct   dense / ring --rope rows: the RoPE kernels of one iteration timed alone (ring: max over
            ranks), and their % of time_ms
  job       the job name of a side-by-side report (None otherwise); label: our own job label (see label_of)
  source, device, date, commit   where the row came from (file, its device, date and git commit)

Keys (the row matching rule, used by both tools):
  SHAPE_FIELDS = (op, pass, causal, window, alibi, rope, dtype, B, H, Hkv, D, ranks, rotary_dim, style, seq)
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
POSITIONAL_KIND = "positional_study"
# The positional study's target (issue 5): overhead under TARGET_PCT % of the plain attention at S >= TARGET_MIN_SEQ.
TARGET_PCT = 3.0
TARGET_MIN_SEQ = 8192
SHAPE_FIELDS = ("op", "pass", "causal", "window", "alibi", "rope", "dtype", "B", "H", "Hkv", "D", "ranks",
                "rotary_dim", "style", "seq")
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
    """'side_by_side', 'bench', 'peers', 'positional_study' or None for a parsed JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return None
    if doc.get("kind") == "side_by_side" and isinstance(doc.get("jobs"), list):
        return "side_by_side"
    if doc.get("kind") == POSITIONAL_KIND and isinstance(doc.get("runs"), list):
        return POSITIONAL_KIND
    if "peer_suite" in doc and "op" in doc:
        return "peers"
    if doc.get("peer") == OURS and "op" in doc:
        return "bench"
    return None


def _normalise(raw, op, impl, job, meta, source, report_ranks):
    if not isinstance(raw, dict) or "seq" not in raw:
        raise StudyError(f"{source}: a row without 'seq' ({str(raw)[:80]})")
    is_rope = op == "rope"
    rope = bool(raw.get("rope", False)) and not is_rope
    H = raw.get("H")
    D = raw.get("D")
    row = {
        "impl": impl,
        "op": op,
        "pass": raw.get("pass", None if is_rope else "fwd"),
        "causal": bool(raw.get("causal", False)),
        "window": int(raw.get("window") or 0),
        "alibi": bool(raw.get("alibi", False)),
        "rope": rope,
        "dtype": raw.get("dtype"),
        "B": int(raw.get("B", 1)),
        "H": H,
        "Hkv": raw.get("Hkv", H),
        "D": D,
        "ranks": int(raw.get("ranks", report_ranks or 1)),
        "rotary_dim": raw.get("rotary_dim", D if is_rope else None) if (is_rope or rope) else None,
        "style": raw.get("style") if (is_rope or rope) else None,
        "seq": int(raw["seq"]),
        "layout": raw.get("layout"),
        "time_ms": raw.get("time_ms"),
        "compute_ms": raw.get("compute_ms"),
        "exposed_comm_ms": raw.get("exposed_comm_ms"),
        "exposed_comm_pct": raw.get("exposed_comm_pct"),
        "rope_ms": raw.get("rope_ms"),
        "rope_share_pct": raw.get("rope_share_pct"),
        "wrong": raw.get("wrong"),
        "error": raw.get("error"),
        "job": job,
        "source": source,
        "device": meta.get("device"),
        "date": meta.get("date"),
        "commit": meta.get("git_commit"),
        "warmup_ms": meta.get("warmup_ms", 0),
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


def _warmup_ms(value):
    """A report's warmup_ms (int, or the positional study's string) as an int; 0 when absent or unreadable."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def rows_of(doc, source):
    """Normalised rows of one parsed document (see the module doc); StudyError on an unknown format."""
    fmt = detect_format(doc)
    if fmt is None:
        raise StudyError(f"{source}: unknown result format (expected a side-by-side report from "
                         "merge_side_by_side.py, distattn_bench -J output or torch_peers/torch_cp -J output)")
    meta = {k: doc.get(k) for k in ("device", "date", "git_commit")}
    # --warmup-ms of the run (0 where the report predates it): a run timed after a 300 ms warm-up sees the capped
    # clock, a short one partly the boost (bench/README.md, "Clocks and warm-up"); compare.py warns when they mix.
    meta["warmup_ms"] = _warmup_ms((doc.get("settings") or {}).get("warmup_ms", (doc.get("options") or {}).get(
        "warmup_ms")))
    # A distattn_bench run with DISTATTN_FORWARD_KERNEL=mma measured the older forward kernel on purpose (an A/B):
    # its rows become their own series, "distattn[mma]", instead of being pooled with the default kernel's.
    # Same for DISTATTN_BACKWARD_KERNEL=mma ("distattn[bwd=mma]"; both forced: "distattn[mma,bwd=mma]").
    kernel = doc.get("forward_kernel")
    bkernel = doc.get("backward_kernel")
    tags = [] if kernel in (None, "auto", "hopper") else [kernel]
    if bkernel not in (None, "auto", "hopper"):
        tags.append(f"bwd={bkernel}")
    ours = OURS if not tags else f"{OURS}[{','.join(tags)}]"
    rows = []
    if fmt == POSITIONAL_KIND:
        for r in doc["rows"]:
            op = r.get("op") if isinstance(r, dict) else None
            if op is None:
                raise StudyError(f"{source}: a positional-study row without 'op'")
            rows.append(_normalise(r, op, OURS, None, meta, source, r.get("ranks")))
    elif fmt == "side_by_side":
        job_op = {j.get("name"): j.get("op") for j in doc["jobs"]}
        job_ranks = {j.get("name"): (j.get("options") or {}).get("ranks") for j in doc["jobs"]}
        # Both tools of a job ran with the same timing options; the job keeps ours.
        job_warmup = {j.get("name"): _warmup_ms((j.get("options") or {}).get("warmup_ms")) for j in doc["jobs"]}
        for r in doc["rows"]:
            job = r.get("job") if isinstance(r, dict) else None
            op = (r.get("op") if isinstance(r, dict) else None) or job_op.get(job)
            if op is None:
                raise StudyError(f"{source}: row of job {job!r} has no op (not in the report's jobs)")
            job_meta = dict(meta, warmup_ms=job_warmup.get(job, 0))
            rows.append(_normalise(r, op, r.get("peer", OURS), job, job_meta, source, job_ranks.get(job)))
    else:
        for r in doc["rows"]:
            impl = (r.get("peer") if isinstance(r, dict) else None) or (ours if fmt == "bench" else None)
            if fmt == "bench" and impl == OURS:
                impl = ours
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
    if row.get("rope"):
        parts.append("rope")
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


def newest_only(rows):
    """The rows of the newest measurement of every (impl, device, key, seq): older runs of the same point dropped.

    Result folders pile up runs of one shape from different commits (e.g. the mma.sync and the Hopper forward);
    pooling them would plot a median of two kernels. 'Newest' is the row's source date (ISO 8601, so string order
    is time order); rows without a date lose to any dated row and are kept only where nothing dated exists.
    """
    best = {}
    for r in rows:
        k = (r["impl"], r["device"], row_key(r), r["seq"])
        best[k] = max(best.get(k, ""), r["date"] or "")
    return [r for r in rows if (r["date"] or "") == best[(r["impl"], r["device"], row_key(r), r["seq"])]]


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

    Ring series: the one-GPU reference is our dense row (ranks 1) of the same pass, mask, shape and global S (a ring
    row with ranks 1 if there is no dense one). Dilated series ("dilated ..."): the one-GPU dilated row (the
    single-device path; the key holds no dilated configuration, so the rows must share one, e.g. the bench default).
    Efficiency = T1 / (N * TN) = (TFLOPs/GPU at N) / TFLOPs at 1.
    Returns {series "pass[ causal] S=..": [(N, efficiency)]} for series with a reference and at least one N > 1;
    N = 1 appears as (1, 1.0). `used`, a list, receives the rows the result was computed from.
    """
    ours = [r for r in rows if r["impl"] == OURS and r["rate"] is not None and r["unit"] == "TFLOPs"]
    key = lambda r: tuple(r[f] for f in _SCALE_FIELDS)  # noqa: E731
    out = {}
    for family, refs in (("ring", ("ring", "dense")), ("dilated", ("dilated",))):
        one = {}
        for pref in refs:  # for the ring, dense overwrites ring: the plain kernel is the reference
            for k, v in reduce_rates([r for r in ours if r["op"] == pref and r["ranks"] == 1], key).items():
                one[k[1]] = v
        multi = reduce_rates([r for r in ours if r["op"] == family and r["ranks"] > 1], lambda r: (r["ranks"],) + key(r))
        for (_, k), rate in multi.items():
            n, sk = k[0], k[1:]
            if sk not in one:
                continue
            if used is not None:
                used.extend(r for r in ours if r["op"] in refs + (family,) and key(r) == sk and r["ranks"] in (1, n))
            d = dict(zip(_SCALE_FIELDS, sk))
            name = (("dilated " if family == "dilated" else "") + f"{d['pass']}{' causal' if d['causal'] else ''}"
                    f"{' alibi' if d['alibi'] else ''} S={_kfmt(d['seq'])}")
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


def variant_of(row):
    """The positional encoding a row of ours ran with: 'none', 'rope', 'alibi' or 'rope+alibi'."""
    on = [name for name in ("rope", "alibi") if row.get(name)]
    return "+".join(on) if on else "none"


def plain_key(row):
    """row_key of the same attention without positional encoding (alibi and rope off, no rotary_dim / style)."""
    d = {f: row[f] for f in KEY_FIELDS}
    d.update(alibi=False, rope=False, rotary_dim=None, style=None)
    return tuple(d[f] for f in KEY_FIELDS)


def overhead_pairs(rows, used=None):
    """Each of our attention rows with a positional encoding against our row of the same attention without it.

    overhead_pct = (time(variant) / time(none) - 1) * 100, both times medians over the rows of their row_key (the
    variant's key and plain_key of it: equal in every field but alibi / rope / rotary_dim / style). Returns a list
    of {label (the plain row's label), shape, seq, variant, time_ms, none_ms, overhead_pct, rope_ms,
    rope_share_pct} sorted by label, shape, variant, seq; rope_ms is the median of the rows' separately timed
    RoPE kernels (None without) and rope_share_pct = rope_ms / time_ms * 100. Keys without a plain row are left
    out. `used`, a list, receives the rows the result was computed from.
    """
    ours = [r for r in rows if r["impl"] == OURS and r["time_ms"] is not None and r["op"] != "rope"]
    by_key = {}
    for r in ours:
        by_key.setdefault(row_key(r), []).append(r)
    med = {k: statistics.median(r["time_ms"] for r in rs) for k, rs in by_key.items()}
    out = []
    for k, rs in by_key.items():
        first = rs[0]
        variant = variant_of(first)
        pk = plain_key(first)
        if variant == "none" or pk not in med:
            continue
        if used is not None:
            used.extend(rs + by_key[pk])
        t, t0 = med[k], med[pk]
        rope = [r["rope_ms"] for r in rs if r.get("rope_ms") is not None]
        rope_ms = statistics.median(rope) if rope else None
        plain = by_key[pk][0]
        out.append({"label": plain["label"], "shape": shape_str(plain), "seq": first["seq"], "variant": variant,
                    "time_ms": t, "none_ms": t0, "overhead_pct": (t / t0 - 1.0) * 100.0, "rope_ms": rope_ms,
                    "rope_share_pct": rope_ms / t * 100.0 if rope_ms is not None and t > 0 else None})
    out.sort(key=lambda p: (p["label"], p["shape"], _variant_order(p["variant"]), p["seq"]))
    return out


def _variant_order(v):
    order = ("none", "rope", "alibi", "rope+alibi")
    return (order.index(v) if v in order else len(order), v)


def positional_table(rows, target_pct=TARGET_PCT, target_min_seq=TARGET_MIN_SEQ):
    """The overhead table of compare.py: one group per plain attention job (label, shape).

    Returns [{label, shape, variants: [names], lines: [{seq, none_ms, cells: {variant: (time_ms, overhead_pct,
    rope_share_pct)}}], verdict: {variant: (worst overhead at S >= target_min_seq or None, met: bool or None)}}];
    met = worst < target_pct (None when no S >= target_min_seq was measured).
    """
    groups = {}
    for p in overhead_pairs(rows):
        g = groups.setdefault((p["label"], p["shape"]), {"label": p["label"], "shape": p["shape"], "variants": [],
                                                         "lines": {}, "verdict": {}})
        if p["variant"] not in g["variants"]:
            g["variants"].append(p["variant"])
        ln = g["lines"].setdefault(p["seq"], {"seq": p["seq"], "none_ms": p["none_ms"], "cells": {}})
        ln["cells"][p["variant"]] = (p["time_ms"], p["overhead_pct"], p["rope_share_pct"])
    out = []
    for key in sorted(groups, key=lambda k: (_pass_mask_order(k[0]), k[1])):
        g = groups[key]
        g["variants"].sort(key=_variant_order)
        g["lines"] = [g["lines"][s] for s in sorted(g["lines"])]
        for v in g["variants"]:
            big = [ln["cells"][v][1] for ln in g["lines"] if v in ln["cells"] and ln["seq"] >= target_min_seq]
            worst = max(big) if big else None
            g["verdict"][v] = (worst, None if worst is None else worst < target_pct)
        out.append(g)
    return out


def _pass_mask_order(label):
    order = {"fwd": 0, "bwd": 1, "fwdbwd": 2}
    parts = label.split()
    return (parts[0], order.get(parts[1], 9) if len(parts) > 1 else 9, label)


def positional(rows, used=None):
    """Positional-encoding overhead of ours, in % of the same attention without it: {series: [(seq, percent)]}.

    'RoPE: <label>', 'ALiBi: <label>', 'RoPE+ALiBi: <label>': overhead_pairs (time with / time without - 1), e.g.
    distattn_bench -o dense (or ring) --rope or --alibi against the same run without.
    'RoPE kernel alone: <label>': the RoPE kernels' share of the step: rope_share_pct of a dense / ring --rope row (its
    RoPE kernels timed alone / its time); for results without one, the time of our rope op row (the RoPE kernel on q
    and k, nothing else) / the time of our plain forward attention row (no ALiBi, no RoPE, no window, one GPU) of
    the same S, B, H, Hkv, D, dtype (a training step also rotates dq and dk back, not timed there).
    `used`, a list, receives the rows the result was computed from.
    """
    names = {"rope": "RoPE", "alibi": "ALiBi", "rope+alibi": "RoPE+ALiBi"}
    out = {}
    for p in overhead_pairs(rows, used):
        out.setdefault(f"{names.get(p['variant'], p['variant'])}: {p['label']}", []).append(
            (p["seq"], p["overhead_pct"]))
        if p["variant"] == "rope" and p["rope_share_pct"] is not None:
            out.setdefault(f"RoPE kernel alone: {p['label']}", []).append((p["seq"], p["rope_share_pct"]))
    ours = [r for r in rows if r["impl"] == OURS and r["time_ms"] is not None]
    attn = {}
    for r in ours:
        if (r["op"] == "dense" and r["pass"] == "fwd" and r["ranks"] == 1 and not r["alibi"] and not r["rope"] and
                not r["window"]):
            attn.setdefault((r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]), {}).setdefault(
                r["label"], []).append(r["time_ms"])
    rope = {}
    for r in ours:
        if r["op"] == "rope":
            rope.setdefault((r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]), []).append(r["time_ms"])
    for k, rt in rope.items():
        for lab, at in attn.get(k, {}).items():
            if f"RoPE kernel alone: {lab}" in out and any(x == k[0] for x, _ in out[f"RoPE kernel alone: {lab}"]):
                continue  # measured inside the dense --rope run already
            if used is not None:
                used.extend(r for r in ours if (r["seq"], r["B"], r["H"], r["Hkv"], r["D"], r["dtype"]) == k and
                            (r["op"] == "rope" or r["label"] == lab))
            out.setdefault(f"RoPE kernel alone: {lab}", []).append(
                (k[0], statistics.median(rt) / statistics.median(at) * 100.0))
    return {k: sorted(v) for k, v in sorted(out.items())}


def positional_panels(rows, used=None):
    """positional() regrouped for the plot: {panel: {line: [(seq, percent)]}}: one panel per attention job without
    its pass ('dense causal', 'dense non-causal'), one line per variant and pass ('RoPE fwd', 'ALiBi fwdbwd')."""
    panels = {}
    for name, pts in positional(rows, used).items():
        variant, _, label = name.partition(": ")
        parts = label.split()
        op, pss, mask = parts[0], (parts[1] if len(parts) > 1 else "?"), " ".join(parts[2:]) or "non-causal"
        panels.setdefault(f"{op} {mask}", {})[f"{variant} {pss}"] = pts
    return {k: dict(sorted(v.items())) for k, v in sorted(panels.items())}


# ----- the positional study's merged report (bench/run_positional_study.sh) -----

def merge_positional(manifest_path, settings=None):
    """Merges the distattn_bench -J files of one positional study into one report (format 'positional_study').

    manifest: one line per bench run in the order they ran, tab-separated: order, tag, exit code, seconds, the
    JSON path (missing when the run failed or was skipped). Rows are the runs' rows with op, ranks, variant
    ('none'/'rope'/'alibi', from the row's rope / alibi fields), run (its order) and command_line added.
    Returns the report dict: kind, device, date / git_commit (the first run's), settings, runs [{order, tag, rc,
    seconds, status, command_line}], rows, status ('OK' when every run exited 0 and no value was wrong, else
    'FAILED'). Raises StudyError on a malformed manifest or an unreadable / non-bench JSON.
    """
    runs, rows, meta = [], [], {}
    try:
        with open(manifest_path) as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    except OSError as e:
        raise StudyError(f"{manifest_path}: cannot read the manifest ({e})") from None
    for n, ln in enumerate(lines, 1):
        cells = ln.split("\t")
        if len(cells) != 5:
            raise StudyError(f"{manifest_path}:{n}: expected 5 tab-separated cells (order, tag, rc, seconds, json), "
                             f"got {len(cells)}")
        order, tag, rc, secs, path = cells
        try:
            run = {"order": int(order), "tag": tag, "rc": int(rc), "seconds": float(secs)}
        except ValueError:
            raise StudyError(f"{manifest_path}:{n}: order, rc and seconds must be numbers ({ln!r})") from None
        doc = None
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    doc = json.load(f)
            except (OSError, ValueError) as e:
                raise StudyError(f"{path}: cannot read JSON ({e})") from None
            if detect_format(doc) != "bench":
                raise StudyError(f"{path}: not a distattn_bench -J report")
        run["status"] = ("skipped" if run["rc"] < 0 else "no JSON") if doc is None else (
            "OK" if run["rc"] == 0 and doc.get("status") in ("OK", "unchecked") else "FAILED")
        run["command_line"] = doc.get("command_line") if doc else None
        runs.append(run)
        if doc is None:
            continue
        for k in ("device", "git_commit", "date"):
            meta.setdefault(k, doc.get(k))
        for r in doc["rows"]:
            rows.append(dict(r, op=doc["op"], ranks=doc.get("ranks", 1), variant=variant_of(r), run=run["order"],
                             command_line=doc.get("command_line")))
    ok = bool(runs) and all(r["status"] == "OK" for r in runs)
    return {"kind": POSITIONAL_KIND, "device": meta.get("device"), "date": meta.get("date"),
            "git_commit": meta.get("git_commit"), "settings": dict(settings or {}), "runs": runs, "rows": rows,
            "status": "OK" if ok else "FAILED"}


def main(argv=None):
    """python3 bench/study_lib.py merge-positional MANIFEST OUT.json [key=value ...]: see merge_positional."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[0] != "merge-positional":
        print("usage: study_lib.py merge-positional MANIFEST OUT.json [key=value ...]", file=sys.stderr)
        return 2
    settings = {}
    for kv in argv[3:]:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"study_lib: setting {kv!r} is not key=value", file=sys.stderr)
            return 2
        settings[k] = v
    try:
        doc = merge_positional(argv[1], settings)
    except StudyError as e:
        print(f"study_lib: {e}", file=sys.stderr)
        return 2
    with open(argv[2], "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"# merged {len(doc['runs'])} run(s), {len(doc['rows'])} row(s) into {argv[2]}: {doc['status']}")
    return 0 if doc["status"] == "OK" else 1


if __name__ == "__main__":
    raise SystemExit(main())
