#!/usr/bin/env python3
"""Merges distattn_bench and torch_peers.py JSON reports of the same shapes into one side-by-side report
and prints a comparison table.

  merge_side_by_side.py OUT.json JOB_NAME OURS.json PEERS.json [JOB_NAME OURS.json PEERS.json ...]

Rows are matched on the sequence length (and, for rope, on the head count and head dim). Jobs whose rows
carry ring columns (exposed_comm_pct, busbw_gbps, peak_mem_mib: distattn_bench -o ring) also print our
time, exposed communication %, K|V busbw and peak MiB per GPU, and each peer's time next to its rate. ratio = our rate /
the peer's rate (TFLOPs for attention, GB/s for rope; the same as peer time / our time): above 1 we are
faster. The output keeps each job's rows nested (ours + every peer) and a flat "rows" list in the
bench/results row format (one row per implementation, with "peer", "job" and "ratio").
"""
import datetime
import json
import os
import sys


def rate_of(row):
    if row.get("tflops") is not None:
        return row["tflops"], "TFLOPs"
    if row.get("gbps") is not None:
        return row["gbps"], "GB/s"
    return None, None


def key_of(row):
    return (row.get("seq"), row.get("H"), row.get("D"))


def main(argv):
    if len(argv) < 5 or (len(argv) - 2) % 3:
        sys.exit(__doc__)
    out_path, triples = argv[1], argv[2:]
    jobs, flat = [], []
    meta = {}
    for i in range(0, len(triples), 3):
        name, ours_path, peers_path = triples[i:i + 3]
        with open(ours_path) as f:
            ours = json.load(f)
        peers = {"rows": []}
        if os.path.exists(peers_path):
            with open(peers_path) as f:
                peers = json.load(f)
        meta.setdefault("device", ours.get("device"))
        meta.setdefault("git_commit", ours.get("git_commit"))
        meta.setdefault("peer_device", peers.get("device"))
        meta.setdefault("torch_version", peers.get("torch_version"))
        by_key = {}
        for r in peers.get("rows", []):
            by_key.setdefault(key_of(r), []).append(r)
        job_rows = []
        for r in ours.get("rows", []):
            ours_rate, unit = rate_of(r)
            entry = {"seq": r["seq"], "unit": unit,
                     "ours": {k: r.get(k) for k in ("time_ms", "tflops", "gbps", "max_err", "wrong", "pct_copy",
                                                    "exposed_comm_pct", "busbw_gbps", "peak_mem_mib")
                              if k in r or k in ("time_ms", "tflops", "gbps", "max_err", "wrong", "pct_copy")},
                     "peers": {}}
            flat.append(dict(r, peer="distattn", job=name, ratio=None))
            for pr in by_key.get(key_of(r), []):
                prate, _ = rate_of(pr)
                ratio = ours_rate / prate if (ours_rate and prate) else None
                entry["peers"][pr["peer"]] = {"time_ms": pr.get("time_ms"), "tflops": pr.get("tflops"),
                                              "gbps": pr.get("gbps"), "ratio": ratio, "error": pr.get("error")}
                if "peak_mem_mib" in pr:
                    entry["peers"][pr["peer"]]["peak_mem_mib"] = pr["peak_mem_mib"]
                flat.append(dict(pr, job=name, ratio=ratio))
            job_rows.append(entry)
        jobs.append({"name": name, "op": ours.get("op"), "ours_command": ours.get("command_line"),
                     "peers_command": peers.get("command_line"), "options": ours.get("options"),
                     "status": ours.get("status"), "rows": job_rows})

    report = {"kind": "side_by_side",
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              **meta, "ratio": "ours / peer (rates; > 1: distattn faster)", "jobs": jobs, "rows": flat}
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)

    # The comparison table: one line per (job, size); each peer as "rate (ratio x)".
    print(f"# side by side on {meta.get('device')} (distattn {meta.get('git_commit')}, torch "
          f"{meta.get('torch_version')}); ratio = ours / peer, > 1: distattn faster")
    for job in jobs:
        peer_names = []
        for row in job["rows"]:
            for p in row["peers"]:
                if p not in peer_names:
                    peer_names.append(p)
        unit = job["rows"][0]["unit"] if job["rows"] else ""
        print(f"# {job['name']}  [{unit}]  check: {job['status']}")
        # Multi-GPU jobs (op ring) also show our time, exposed communication and K|V busbw.
        multi = any("exposed_comm_pct" in row["ours"] for row in job["rows"])
        extra = f" {'ms':>9} {'exp%':>6} {'busbw':>7} {'MiB':>7}" if multi else ""
        head = f"{'seq':>8} {'distattn':>10}{extra}" + "".join(f" {p:>26}" for p in peer_names)
        print(head)
        for row in job["rows"]:
            ours_rate = row["ours"]["tflops"] if row["ours"]["tflops"] is not None else row["ours"]["gbps"]
            line = f"{row['seq']:>8} {ours_rate:>10.1f}"
            if multi:
                o = row["ours"]
                line += (f" {o.get('time_ms') or 0:>9.3f} {o.get('exposed_comm_pct') or 0:>6.1f}"
                         f" {o.get('busbw_gbps') or 0:>7.1f} {o.get('peak_mem_mib') or 0:>7.0f}")
            for p in peer_names:
                pr = row["peers"].get(p)
                if pr is None or pr.get("error"):
                    cell = "n/a" if pr is None else "refused/skip"
                else:
                    rate = pr["tflops"] if pr["tflops"] is not None else pr["gbps"]
                    cell = f"{rate:.1f} ({pr['ratio']:.2f}x)" if pr.get("ratio") else f"{rate:.1f}"
                    if multi and pr.get("time_ms") is not None:
                        cell = f"{pr['time_ms']:.2f}ms {cell}"
                line += f" {cell:>26}"
            print(line)
    print(f"# merged JSON: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
