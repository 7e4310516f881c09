"""Time loading the method/metric catalogue that planning reads, from a given source tree.

    python benchmarks/catalog_load.py SRC_DIR     (e.g. src, or another checkout's src)

Before issue 14 the catalogue was read from the modules' source with `ast` on every Snakemake
invocation; since, it is the derived file schemas/catalog.json. The lru caches are cleared
between loads, so each load is what one invocation pays.
"""

import sys, time, importlib
src = sys.argv[1]
sys.path.insert(0, src)
import attrflow.catalog as c
def load():
    c.catalog.cache_clear()
    if hasattr(c, "_document"):
        c._document.cache_clear()
    c.catalog("methods"); c.catalog("metrics")
load()
n = 50
best = []
for rep in range(5):
    t = time.perf_counter()
    for _ in range(n):
        load()
    best.append((time.perf_counter() - t) / n)
print(f"{src}: catalog load (methods+metrics), best of 5 x {n}: {min(best)*1e3:.2f} ms; median {sorted(best)[2]*1e3:.2f} ms")
