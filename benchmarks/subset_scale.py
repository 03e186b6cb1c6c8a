"""Cost of a 10k-image subset of a train2017-sized COCO json vs the full set.

Generates a synthetic COCO instances json the size of COCO train2017 (118,287 images, 1,021 of
them without annotations, ~860k polygon instances, 80 categories with COCO's ids) in a temporary
directory, then measures, each load in a fresh subprocess (peak RSS = VmHWM of that process):

* selection: ranking all eligible image ids and taking 10k (``subsets.choose_positions``);
* full: ``load_coco_json`` of the whole file (what training on train2017 costs per run);
* subset: ``DatasetCatalog.get("bench@10k")`` with the subset cache in place (every run but the
  first); the first, cold run (parses the full json once and writes the subset json) is shown too;
* baseline: the imports alone (torch + Detectron2 cost every process ~0.7 GB), so peak RSS is
  compared both for whole processes and above that baseline.

Load times are the fastest of ``--repeat`` interleaved runs (the machine may be shared).

Usage::

    python benchmarks/subset_scale.py            # ~5-10 min on 2 busy cores, ~6 GB RAM peak
    python benchmarks/subset_scale.py --images 20000 --instances 145000   # quicker
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# COCO's 80 category ids (1..90 with 10 gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _polygon_pool(rng, size=4096):
    """Polygons (json text, bbox text, area) inside a 640x480 image, reused by the annotations."""
    pool = []
    for _ in range(size):
        n = int(rng.integers(8, 37))
        cx, cy = rng.uniform(60, 580), rng.uniform(60, 420)
        radius = rng.uniform(5, 55, size=n)
        angle = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        xs, ys = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
        coords = ",".join(f"{v:.2f}" for xy in zip(xs, ys) for v in xy)
        x0, y0 = xs.min(), ys.min()
        w, h = xs.max() - x0, ys.max() - y0
        area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        pool.append((f"[[{coords}]]", f"[{x0:.2f},{y0:.2f},{w:.2f},{h:.2f}]", f"{area:.2f}"))
    return pool


def generate(path, num_images, num_instances, num_empty, seed=0):
    """
    Write a synthetic COCO instances json.

    Args:
        path (str): output file.
        num_images (int): number of images.
        num_instances (int): approximate number of annotations.
        num_empty (int): images without annotations.
        seed (int): generator seed.

    Returns:
        tuple[list[int], int]: ids of the images with at least one non-crowd annotation, and the
        number of annotations written.
    """
    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(np.arange(1, 581930), size=num_images, replace=False))
    counts = np.zeros(num_images, dtype=np.int64)
    annotated = np.sort(rng.choice(num_images, size=num_images - num_empty, replace=False))
    counts[annotated] = 1 + rng.poisson(num_instances / len(annotated) - 1, size=len(annotated))
    pool = _polygon_pool(rng)
    with open(path, "w") as f:
        f.write('{"info":{"description":"synthetic train2017-sized COCO json"},')
        f.write('"licenses":[{"id":1,"name":"synthetic","url":""}],"images":[')
        heights = rng.choice([480, 427, 640, 375], size=num_images)
        f.write(
            ",".join(
                '{"license":1,"file_name":"%012d.jpg","coco_url":"http://images.cocodataset.org/'
                'train2017/%012d.jpg","height":%d,"width":640,"date_captured":"2013-11-14 '
                '11:18:45","flickr_url":"http://farm4.staticflickr.com/0/0_0_z.jpg","id":%d}'
                % (i, i, h, i)
                for i, h in zip(image_ids.tolist(), heights.tolist())
            )
        )
        f.write('],"annotations":[')
        total = int(counts.sum())
        owners = np.repeat(image_ids, counts)
        first = np.ones(total, dtype=bool)
        first[1:] = owners[1:] != owners[:-1]
        crowd = (~first) & (rng.random(total) < 0.009)  # an image's first instance is never crowd
        cats = rng.choice(COCO_CATEGORY_IDS, size=total)
        polys = rng.integers(0, len(pool), size=total)
        template = (
            '{"id":%d,"image_id":%d,"category_id":%d,"iscrowd":%d,"area":%s,"bbox":%s,'
            '"segmentation":%s}'
        )
        chunk = 50000
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            parts = []
            for k, img, cat, is_crowd, p in zip(
                range(start + 1, stop + 1),
                owners[start:stop].tolist(),
                cats[start:stop].tolist(),
                crowd[start:stop].tolist(),
                polys[start:stop].tolist(),
            ):
                segm, bbox, area = pool[p]
                parts.append(template % (k, img, cat, is_crowd, area, bbox, segm))
            f.write(("," if start else "") + ",".join(parts))
        f.write('],"categories":[')
        f.write(
            ",".join(
                '{"supercategory":"thing","id":%d,"name":"category_%d"}' % (c, c)
                for c in COCO_CATEGORY_IDS
            )
        )
        f.write("]}")
    return image_ids[counts > 0].tolist(), total


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def child(mode, json_file, cache_dir, subset):
    """Run one measurement in this (fresh) process and print it as one JSON line."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import load_coco_json, register_coco_instances

    from rethink_d2.data.subsets import register_subset

    image_root = os.path.dirname(json_file)
    start = time.perf_counter()
    if mode == "full":
        num = len(load_coco_json(json_file, image_root, "bench_full"))
    elif mode == "subset":
        register_coco_instances("bench", {}, json_file, image_root)
        num = len(DatasetCatalog.get(register_subset(f"bench@{subset}", cache_dir=cache_dir)))
    else:
        num = 0
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "images": num}))


def measure(mode, json_file, cache_dir, subset):
    """Run :func:`child` in a subprocess and return its measurement."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--json", json_file]
    cmd += ["--cache", cache_dir, "--subset", subset]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--instances", type=int, default=860001)
    parser.add_argument("--empty", type=int, default=1021, help="images without annotations")
    parser.add_argument("--subset", default="10k")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each load (fastest kept)")
    parser.add_argument("--child", choices=["full", "subset", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.child:
        return child(args.child, args.json, args.cache, args.subset)

    from rethink_d2.data.subsets import choose_positions, parse_subset_spec

    workdir = tempfile.mkdtemp(prefix="rethink_subset_scale_")
    try:
        json_file = os.path.join(workdir, "instances_synthetic_train.json")
        cache_dir = os.path.join(workdir, "cache")
        start = time.perf_counter()
        eligible, total = generate(json_file, args.images, args.instances, args.empty)
        print(
            f"generated {json_file}: {args.images} images ({len(eligible)} with annotations), "
            f"{total} instances, {os.path.getsize(json_file) / 2**20:.0f} MB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        chosen = choose_positions(eligible, parse_subset_spec(args.subset), seed=0)
        selection = time.perf_counter() - start
        print(f"selection of {len(chosen)} of {len(eligible)} eligible images: {selection:.3f} s")

        cold = measure("subset", json_file, cache_dir, args.subset)  # builds the cache
        rows = {"baseline (imports only)": measure("baseline", json_file, cache_dir, args.subset)}
        for _ in range(args.repeat):  # interleaved; the fastest run of each counts
            for label, mode in [("full set", "full"), (f"subset @{args.subset}", "subset")]:
                r = measure(mode, json_file, cache_dir, args.subset)
                if label not in rows or r["seconds"] < rows[label]["seconds"]:
                    rows[label] = r
        rows[f"subset @{args.subset}, cold cache (once)"] = cold
        base = rows["baseline (imports only)"]["peak_rss_mb"]
        for label, r in rows.items():
            print(
                f"{label:34s} load {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:6.0f} MB "
                f"(+{r['peak_rss_mb'] - base:5.0f} MB over imports)   {r['images']} images"
            )
        full, warm = rows["full set"], rows[f"subset @{args.subset}"]
        speedup = full["seconds"] / warm["seconds"]
        rss = warm["peak_rss_mb"] / full["peak_rss_mb"]
        data_rss = (warm["peak_rss_mb"] - base) / (full["peak_rss_mb"] - base)
        print(f"selection alone: {selection:.3f} s   (target < 1 s)")
        print(f"load speedup, full / subset: {speedup:.1f}x   (target >= 8x)")
        print(
            f"peak RSS, subset / full: {rss:.3f} = 1/{1 / rss:.1f} of the whole process, "
            f"{data_rss:.3f} = 1/{1 / data_rss:.1f} above the {base:.0f} MB that importing "
            "torch + Detectron2 costs every process   (target <= 0.2)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
