"""CSI feature extraction speed: structures and atoms per second of each built-in extractor on bundled data.

For every extractor (sevenn, chgnet, soap, soap-full with 8 species) and dataset (bundled:ethanol, 1000
molecules of 9 atoms; bundled:oxides, 295 periodic cells of 3-24 atoms): the time to build the extractor
(imports and weights), one warm-up call on the first batch, then `--repeats` timed passes over the whole set
in batches of `--batch-size` (`FeatureExtractor.features`, as the CSI pipeline calls it); the best pass is
reported with the range over passes. Nothing is compared, so nothing alternates; run it on a quiet machine
(a busy neighbour slows the torch extractors several times over). Command:

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/extractor_speed.py
"""

from __future__ import annotations

import argparse
import os
import time

from _machine import machine_line
from atomsift.csi.extract import get_extractor
from atomsift.data import open_dataset

EXTRACTORS = {
    "sevenn": {},
    "chgnet": {},
    "soap": {},
    "soap-full": {"species": "H,C,O,Ir,Ru,Sn,Ti,V"},  # 8 species: the elements of the two bundled sets
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extractors", default=",".join(EXTRACTORS))
    parser.add_argument("--data", default="ethanol,oxides")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{machine_line()}  batch {args.batch_size}  load {os.getloadavg()[0]:.2f}")
    header = f"{'extractor':<10} {'data':<8} {'structures':>10} {'atoms':>6} {'build s':>8} {'structures/s':>18} {'atoms/s':>18}"
    print(header)
    print("-" * len(header))
    data = {name: open_dataset(f"bundled:{name}") for name in args.data.split(",")}
    records = {name: [ds[i] for i in range(len(ds))] for name, ds in data.items()}
    for ext_name in args.extractors.split(","):
        options = dict(EXTRACTORS.get(ext_name, {}))
        start = time.perf_counter()
        extractor = get_extractor(ext_name, **options)
        built = time.perf_counter() - start
        for name, recs in records.items():
            atoms = sum(r.natoms for r in recs)
            batches = [recs[k : k + args.batch_size] for k in range(0, len(recs), args.batch_size)]
            extractor.features(batches[0])  # warm-up
            passes = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for batch in batches:
                    extractor.features(batch)
                passes.append(time.perf_counter() - start)
            best, worst = min(passes), max(passes)
            rate = f"{len(recs) / best:.0f} ({len(recs) / worst:.0f}-)"
            atom_rate = f"{atoms / best:.0f} ({atoms / worst:.0f}-)"
            print(
                f"{ext_name:<10} {name:<8} {len(recs):>10} {atoms:>6} {built:>8.1f} {rate:>18} {atom_rate:>18}",
                flush=True,
            )
            built = 0.0  # built once per extractor
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
