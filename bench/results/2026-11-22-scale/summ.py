import json, sys
r = json.load(sys.stdin)
l = r["latency_ms"]
print(f"  {r['scenario']}: {r['count']} ok, {r['errors']} errors, {r['rps']:.0f}/s, "
      f"p50 {l['p50']:.2f} p99 {l['p99']:.2f} p99.9 {l['p99.9']:.2f} max {l['max']:.2f} ms; "
      f"extra {r.get('extra', {})}")
