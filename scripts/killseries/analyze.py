#!/usr/bin/python3
"""Analysis of the kill series.

  analyze.py [RUN ...]      (default: every run under $KS_DIR/runs)

Writes runs/N/analysis.txt per run and prints a summary table
(also written to $KS_DIR/summary.md).
"""
import calendar
import collections
import json
import os
import re
import sys

WORK = os.environ.get("KS_DIR", "/tmp/moat-killseries")
RUNS = os.path.join(WORK, "runs")
PATTERNS = ["queue full", "dropped", "could not", "slow", "not stored"]
# Info lines counted per run (analysis.txt, "survivors' notes").
INFO_NOTES = [
    ("claims that took the old home for dead", "a claim stopped waiting for the session's former node"),
    ("floors read without asking the dead leader", "which the node gone led"),
    ("first messages without the stream's end", "the durable stream's end could not be read"),
    ("client claims not stored at first", "client claim not stored yet"),
    ("client claims stored late", "client claim stored late"),
]
LINE_RE = re.compile(r'^time=(\S+) level=(\w+) msg="((?:[^"\\]|\\.)*)"(.*)$')


def ts(s):
    # 2026-12-05T16:48:28.916Z
    base, frac = s.rstrip("Z").split(".") if "." in s else (s.rstrip("Z"), "0")
    t = calendar.timegm(tuple(int(x) for x in re.split(r"[-T:]", base)) + (0, 0, 0))
    return t + float("0." + frac)


def ranges(ns):
    ns = sorted(ns)
    out, i = [], 0
    while i < len(ns):
        j = i
        while j + 1 < len(ns) and ns[j + 1] == ns[j] + 1:
            j += 1
        out.append(str(ns[i]) if i == j else "%d-%d" % (ns[i], ns[j]))
        i = j + 1
    return ", ".join(out)


def read_log(path):
    lines = []
    if not os.path.exists(path):
        return lines
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE_RE.match(raw.rstrip("\n"))
            if m:
                try:
                    t = ts(m.group(1))
                except Exception:
                    t = None
                lines.append((t, m.group(2), m.group(3), raw.rstrip("\n")))
    return lines


# What a run's KILL_NODE did, where it is not one node killed.
KILLED = {0: "moved the subscriber off node1", 4: "killed every node and started them again"}
LABEL = {0: "none (move)", 4: "all (restarted)"}


def analyze(num):
    rd = os.path.join(RUNS, str(num))
    meta = json.load(open(os.path.join(rd, "run.json")))
    out = []
    p = out.append
    row = {"run": num, "kill": meta["kill_node"], "leader": meta.get("leader_before", "?"),
           "leader_after": meta.get("leader_after", "?"), "leader_end": meta.get("leader_end", "?"),
           "sleader": meta.get("sessions_leader_before", "?")}
    if meta.get("error"):
        row["error"] = meta["error"]
        p("run %s: ERROR %s" % (num, meta["error"]))
        open(os.path.join(rd, "analysis.txt"), "w").write("\n".join(out) + "\n")
        return row, "\n".join(out)
    tk = meta["t_kill"]
    rel = lambda t: "%+.3fs" % (t - tk)
    p("run %s: %s at %s UTC; moat_msgs leader before %s, 8 s after %s; moat_sessions leader before %s" % (
        num, KILLED.get(meta["kill_node"], "killed node%d" % meta["kill_node"]), __import__("time").strftime("%H:%M:%S", __import__("time").gmtime(tk)),
        row["leader"], row["leader_after"], row["sleader"]))
    pubs = {}
    for name in "AB":
        try:
            pubs[name] = json.load(open(os.path.join(rd, "pub-%s.json" % name)))
        except Exception as e:
            p("publisher %s: no result (%r)" % (name, e))
            pubs[name] = {"msgs": [], "events": []}
    subev = [json.loads(l) for l in open(os.path.join(rd, "sub.jsonl")) if l.strip()]
    msgs = [e for e in subev if e["ev"] == "msg"]
    conns = [e for e in subev if e["ev"] in ("connect", "lost", "resubscribed", "fatal")]

    sent = {}
    acked = {}
    for name, d in pubs.items():
        sent[name] = {m["n"]: m for m in d["msgs"]}
        acked[name] = {m["n"] for m in d["msgs"] if m.get("ack") is not None and m.get("rc") is not None and m["rc"] < 0x80}
        nacked = [m["n"] for m in d["msgs"] if m.get("rc") is not None and m["rc"] >= 0x80]
        p("publisher %s: sent %d, acknowledged %d, PUBACK >= 0x80: %d%s, no PUBACK: %d" % (
            name, len(d["msgs"]), len(acked[name]), len(nacked),
            (" (" + ranges(nacked) + ")") if nacked else "",
            sum(1 for m in d["msgs"] if m.get("ack") is None)))
        for e in d["events"]:
            if e["ev"] == "lost":
                p("  %s lost connection to node%d at %s (rc %s)" % (name, e["node"], rel(e["t"]), e["rc"]))
            elif e["t"] > tk - 1:
                p("  %s connect node%d at %s: ok=%s rc=%s err=%s (CONNACK at %s)" % (
                    name, e["node"], rel(e["t"]), e["ok"], e["rc"], e["err"], rel(e["t_done"])))
        row["acked_" + name] = len(acked[name])
        row["nack_" + name] = len(nacked)

    # the survivors' publish gates (recorded since the gate waited for
    # catch-ups; older runs have none)
    gate = meta.get("gate") or {}
    row["gate"] = [0, 0, 0] if gate else None
    for node, g in sorted(gate.items()):
        if "error" in g:
            row["gate"] = None
            p("node%s publish gate: status not read (%s)" % (node, g["error"]))
            continue
        p("node%s publish gate: %d first messages waited, %d of them for a catch-up, %d went on before it caught up" % (
            node, g["publishers_waited"], g["publishers_waited_catch_up"], g["publishers_not_caught_up"]))
        if row["gate"] is not None:
            for k, key in enumerate(("publishers_waited", "publishers_waited_catch_up", "publishers_not_caught_up")):
                row["gate"][k] += g[key]

    # receipts
    seen = collections.Counter()
    first = {}  # (name, n) -> receipt
    ooo = []
    dups = 0
    dupflag = 0
    maxn = collections.defaultdict(int)
    maxrec = {}
    for r in msgs:
        try:
            name, n = r["payload"].split(":")
            n = int(n)
        except ValueError:
            continue
        key = (name, n)
        seen[key] += 1
        dupflag += r["dup"]
        if seen[key] > 1:
            dups += 1
            continue
        first[key] = r
        if n < maxn[name]:
            ooo.append((name, n, r, maxn[name], maxrec[name]))
        if n > maxn[name]:
            maxn[name] = n
            maxrec[name] = r
    missing = {name: sorted(acked[name] - {n for (nm, n) in first if nm == name}) for name in pubs}
    row["missing"] = sum(len(v) for v in missing.values())
    row["ooo"] = len(ooo)
    # out-of-order within one connection (same client ID) vs across a reconnection
    same = [o for o in ooo if sent[o[0]].get(o[1], {}).get("cid") == sent[o[0]].get(o[3], {}).get("cid")]
    row["ooo_same"] = len(same)
    row["dups"] = dups
    p("subscriber: %d receipts, %d distinct, %d duplicates (%d with the DUP flag)" % (
        len(msgs), len(first), dups, dupflag))
    for name in pubs:
        if missing[name]:
            p("MISSING %s: %d acknowledged never received: %s" % (name, len(missing[name]), ranges(missing[name])))
            for n in missing[name][:10]:
                m = sent[name][n]
                p("  %s:%d sent %s via node%d (%s), PUBACK %s rc %s" % (
                    name, n, rel(m["sent"]), m["node"], m["cid"], rel(m["ack"]), m["rc"]))
    if ooo:
        byname = collections.Counter(o[0] for o in ooo)
        nacked = sum(1 for o in ooo if o[1] in acked.get(o[0], ()))
        p("OUT OF ORDER: %d (%s), %d of them acknowledged; of them %d behind a later message of the same client ID (connection), %d behind one sent by the publisher's next client ID" % (
            len(ooo), ", ".join("%s %d" % kv for kv in sorted(byname.items())), nacked, len(same), len(ooo) - len(same)))
        for name, n, r, mx, mr in ooo[:8]:
            m = sent[name].get(n, {})
            p("  %s:%d received %s on node%d after %s:%d (received %s, sent %s via %s); %s:%d sent %s via %s, PUBACK %s" % (
                name, n, rel(r["t"]), r["node"], name, mx, rel(mr["t"]), rel(sent[name][mx]["sent"]), sent[name][mx]["cid"],
                name, n, rel(m["sent"]) if m else "?", m.get("cid"), rel(m["ack"]) if m.get("ack") else "none"))
        ns = sorted(set((o[0], o[1]) for o in ooo))
        for name in sorted(byname):
            p("  %s numbers: %s" % (name, ranges([n for nm, n in ns if nm == name])))
    if dups:
        dl = sorted(k for k, c in seen.items() if c > 1)
        for name in sorted(set(k[0] for k in dl)):
            p("  duplicates %s: %s" % (name, ranges([n for nm, n in dl if nm == name])))
    # unacknowledged but received
    unack_recv = sum(1 for (name, n) in first if n not in acked.get(name, ()))
    p("received though not acknowledged: %d" % unack_recv)

    # subscriber connection history after the kill
    p("subscriber connections:")
    resumed = None
    sp = []
    for e in conns:
        if e["ev"] == "connect":
            if e["t"] >= tk - 1:
                p("  connect node%d at %s: ok=%s rc=%s session_present=%s err=%s (answer at %s)" % (
                    e["node"], rel(e["t"]), e["ok"], e["rc"], e["session_present"], e["err"], rel(e["t_done"])))
            if e["ok"] and e["t"] > tk:
                sp.append(e["session_present"])
                if resumed is None:
                    resumed = e["t_done"] - tk
        elif e["ev"] == "lost":
            p("  lost node%d at %s rc %s" % (e["node"], rel(e["t"]), e["rc"]))
        else:
            p("  %s at %s" % (e["ev"], rel(e["t"])))
    row["resume"] = resumed
    row["sp"] = sp
    row["sub_lost"] = sum(1 for e in conns if e["ev"] == "lost")
    # delivery delay
    worst = None
    for (name, n), r in first.items():
        m = sent.get(name, {}).get(n)
        if m:
            d = r["t"] - m["sent"]
            if worst is None or d > worst[0]:
                worst = (d, name, n, r)
    if worst:
        p("latest delivery: %s:%d %.3fs after it was sent (received %s)" % (worst[1], worst[2], worst[0], rel(worst[3]["t"])))
        row["maxdelay"] = worst[0]

    # logs of the surviving nodes
    counts = collections.Counter()
    texts = collections.Counter()
    nearlines = []
    for i in (1, 2, 3):
        lines = read_log(os.path.join(rd, "node%d" % i, "serve.log"))
        if i == meta["kill_node"]:
            continue
        for t, lvl, msg, raw in lines:
            if lvl in ("WARN", "ERROR") or ("component=cluster" in raw and "Router connection closed" not in raw):
                if "connect to route" not in raw:
                    nearlines.append((t, i, lvl, raw))
            if lvl not in ("WARN", "ERROR"):
                continue
            low = raw.lower()
            hit = False
            for pat in PATTERNS:
                if pat in low:
                    counts[(i, pat)] += 1
                    hit = True
            if hit:
                texts[(i, lvl, msg[:120])] += 1
    # Steps of note logged at Info: a claim that took the old home for
    # dead after 2 s without a route, a publisher's first message that
    # went on without the stream's end.
    notes = collections.Counter()
    for i in (1, 2, 3):
        if i == meta["kill_node"]:
            continue
        for t, lvl, msg, raw in read_log(os.path.join(rd, "node%d" % i, "serve.log")):
            for key, pat in INFO_NOTES:
                if pat in raw:
                    notes[key] += 1
    if notes:
        p("survivors' notes: " + ", ".join("%s %d" % kv for kv in sorted(notes.items())))
    row["notes"] = dict(notes)
    p("survivors' WARN/ERROR lines matching %s:" % PATTERNS)
    if not counts:
        p("  none")
    for (i, pat), c in sorted(counts.items()):
        p("  node%d %-11s %d" % (i, pat, c))
    for (i, lvl, msg), c in sorted(texts.items()):
        p("  node%d %s x%d: %s" % (i, lvl, c, msg))
    row["log"] = "; ".join("n%d %s:%d" % (i, pat, c) for (i, pat), c in sorted(counts.items()))
    # WARN/ERROR lines near anomalies
    spans = [(sent[name][n]["sent"] - 1, sent[name][n]["sent"] + 3) for name in missing for n in missing[name][:3]]
    for o in ooo[:3]:
        m = sent[o[0]].get(o[1])
        spans.append(((m["sent"] if m else o[2]["t"]) - 1, o[2]["t"] + 1))
    if spans:
        p("survivors' WARN/ERROR and cluster lines from 1 s before the first anomalous message was sent"
          " to 1 s after it was received (route dial errors left out):")
        shown = 0
        for t, i, lvl, raw in sorted(nearlines, key=lambda x: x[0] or 0):
            if t is not None and any(a <= t <= b for a, b in spans):
                p("  node%d %s %s" % (i, rel(t), raw[:300]))
                shown += 1
                if shown >= 40:
                    p("  ...")
                    break
    text = "\n".join(out)
    open(os.path.join(rd, "analysis.txt"), "w").write(text + "\n")
    return row, text


def main():
    nums = sys.argv[1:] or sorted((d for d in os.listdir(RUNS) if d.isdigit()), key=int)
    rows = []
    for n in nums:
        try:
            row, text = analyze(n)
        except Exception as e:
            row = {"run": n, "error": "analysis failed: %r" % (e,)}
        rows.append(row)
    hdr = "| run | killed | moat_msgs leader (before → 8 s after → end) | acked A/B | PUBACK≥0x80 A/B | missing | out-of-order (same client ID) | dups | sub resumed s | session_present | max delay s | first msgs waited / for a catch-up / went on | survivors' matching log lines |"
    lines = [hdr, "|" + "---|" * hdr.count("|")[:-1] if False else "|" + "---|" * (hdr.count("|") - 1)]
    for r in rows:
        if r.get("error"):
            lines.append("| %s | %s | | | | | | | | | | | %s |" % (r["run"], r.get("kill", ""), r["error"]))
            continue
        lines.append("| %s | %s | %s → %s → %s | %d/%d | %d/%d | %d | %d (%d) | %d | %s | %s | %.2f | %s | %s |" % (
            r["run"], LABEL.get(r["kill"], "node%d" % r["kill"]), r["leader"], r["leader_after"], r["leader_end"], r["acked_A"], r["acked_B"],
            r["nack_A"], r["nack_B"], r["missing"], r["ooo"], r["ooo_same"], r["dups"],
            "%.2f" % r["resume"] if r["resume"] is not None else "-",
            ",".join(str(x) for x in r["sp"]) or "-", r.get("maxdelay", float("nan")),
            "/".join(str(x) for x in r["gate"]) if r["gate"] else "-", r["log"] or "-"))
    ok = [r for r in rows if not r.get("error")]
    lines.append("")
    lines.append("| killed | runs | runs with missing (msgs) | runs with out-of-order (msgs; same client ID msgs) | runs with dups (msgs) | sub resumed s min/median/max | median when the killed node led moat_msgs or moat_sessions / neither | session_present 0 | max delay s (max) | first msgs waited / for a catch-up / went on (sums) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for k in (1, 2, 3, 0, 4):
        rs = [r for r in ok if r["kill"] == k]
        if not rs:
            continue
        res = sorted(r["resume"] for r in rs if r["resume"] is not None)
        # A claim waits for the election of either stream the killed
        # node led: moat_sessions for its session record, moat_msgs
        # for this node's own commits before it.
        led = lambda want: sorted(r["resume"] for r in rs if r["resume"] is not None and r["sleader"] != "?"
                                  and ("node%d" % k in (r["sleader"], r["leader"])) == want)
        med = lambda xs: "%.2f (%d)" % (xs[len(xs) // 2], len(xs)) if xs else "-"
        lines.append("| %s | %d | %d (%d) | %d (%d; %d) | %d (%d) | %s | %s | %d | %.2f | %s |" % (
            LABEL.get(k, "node%d" % k), len(rs), sum(1 for r in rs if r["missing"]), sum(r["missing"] for r in rs),
            sum(1 for r in rs if r["ooo"]), sum(r["ooo"] for r in rs), sum(r["ooo_same"] for r in rs),
            sum(1 for r in rs if r["dups"]), sum(r["dups"] for r in rs),
            "%.2f/%.2f/%.2f" % (res[0], res[len(res) // 2], res[-1]) if res else "-",
            "%s / %s" % (med(led(True)), med(led(False))) if k in (1, 2, 3) else "-",
            sum(1 for r in rs for x in r["sp"] if x != 1), max(r.get("maxdelay", 0) for r in rs),
            "/".join(str(sum(r["gate"][k] for r in rs if r["gate"])) for k in range(3))
            + ("" if all(r["gate"] for r in rs) else " (%d runs not read)" % sum(1 for r in rs if not r["gate"]))))
    errs = [r for r in rows if r.get("error")]
    if errs:
        lines.append("runs without a result: " + ", ".join("%s (%s)" % (r["run"], r["error"]) for r in errs))
    s = "\n".join(lines)
    print(s)
    if len(sys.argv) == 1:
        open(os.path.join(WORK, "summary.md"), "w").write(s + "\n")


if __name__ == "__main__":
    main()
