import json, os, sys, statistics, collections
d = sys.argv[1]
t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    if not f.endswith('.json'): continue
    try:
        j = json.load(open(os.path.join(d, f)))
    except Exception as e:
        print('bad', f, e); continue
    parts = f[:-5].split('_', 1)
    key = parts[1]
    for r in j['rows']:
        t[key].append(r['time_ms'])
        rs = r.get('rope_ms')
        if rs: t[key + '#rope_ms'].append(rs)
def med(k): return statistics.median(t[k]) if t.get(k) else float('nan')
print('%-22s %9s %9s %9s %8s %8s %9s' % ('case', 'none', 'off', 'on', 'off%', 'on%', 'rope_ms'))
for mask in ('causal', 'full'):
    for S in ('2K', '4K', '8K', '16K', '32K'):
        k = f'{mask}_{S}'
        n, a, b = med(k + '_none'), med(k + '_off'), med(k + '_on')
        print('%-22s %9.4f %9.4f %9.4f %+8.2f %+8.2f %9.4f   n=%s' % (k, n, a, b, 100 * (a / n - 1), 100 * (b / n - 1), med(k + '_off#rope_ms'), [len(t.get(k + x, [])) for x in ('_none', '_off', '_on')]))
n = med('causal_8K_none')
for k in sorted(t):
    if k.startswith('causal_8K_') and ('CTAS' in k or 'FIRST' in k) and '#' not in k:
        print('%-22s %9.4f %+8.2f  %s' % (k, med(k), 100 * (med(k) / n - 1), ['%.4f' % x for x in t[k]]))
