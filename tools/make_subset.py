#!/usr/bin/env python
"""Write a COCO-format json of a subset and print its statistics.

The subset is the one a ``<dataset>@<size>`` name selects in rethink-d2 (same eligible images,
same keyed-hash draw, same seed), so other frameworks (e.g. MMDetection) can train on exactly the
images of a rethink-d2 run, or a Detectron2 config can register the small file directly::

    python tools/make_subset.py --json datasets/coco/annotations/instances_train2017.json \\
        --size 10k --seed 0 --output instances_train2017@10k.json
    python tools/make_subset.py --dataset coco_2017_train --size 0.1 --output train@0.1.json
    python tools/make_subset.py --json instances_train2017.json \\
        --manifest output/run/subset_manifest.json --output same_images_as_run.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rethink_d2.data.coco_fast import (  # noqa: E402
    coco_eligible_ids,
    coco_subset,
    read_coco_json,
    write_json_atomic,
)
from rethink_d2.data.subsets import (  # noqa: E402
    check_subset_seed,
    choose_positions,
    coco_stats,
    parse_subset_spec,
    read_manifest,
)
from rethink_d2.utils.errors import DatasetError, RethinkError, report_user_error  # noqa: E402


def parse_args(argv=None):
    """
    Args:
        argv (list[str] or None): command line (None: ``sys.argv[1:]``).

    Returns:
        argparse.Namespace
    """
    parser = argparse.ArgumentParser(
        description="Write a COCO json of a deterministic subset (as '<dataset>@<size>' selects).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="a COCO instances json")
    source.add_argument("--dataset", help="a registered COCO-json dataset, e.g. coco_2017_train")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--size", help="count (1000, 1k, 3.5k) or fraction (0.1, 10%%)")
    which.add_argument("--manifest", help="subset_manifest.json of a run: reuse its images")
    parser.add_argument("--entry", help="which subset of the manifest (default: its only one)")
    parser.add_argument("--seed", type=int, default=0, help="subset seed (default 0)")
    parser.add_argument("--output", required=True, help="the subset json to write")
    return parser.parse_args(argv)


def _json_of(dataset):
    """The json_file of a registered dataset (Detectron2's built-in names included)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import rethink_d2  # noqa: F401  (registers the built-in datasets)

    if dataset not in DatasetCatalog:
        raise DatasetError(f"--dataset '{dataset}' is not registered; pass its file with --json")
    json_file = MetadataCatalog.get(dataset).get("json_file")
    if not json_file:
        raise DatasetError(f"--dataset '{dataset}' has no json_file in its metadata; use --json")
    return json_file


def _manifest_selection(path, entry_name):
    """(SubsetSpec, image ids) of one dataset-level entry of a manifest."""
    entries = {name: e for name, e in read_manifest(path, key="--manifest")["subsets"].items()}
    if entry_name is None and len(entries) == 1:
        entry_name = next(iter(entries))
    if entry_name not in entries:
        raise DatasetError(
            f"--manifest '{path}' has subsets {sorted(entries)}; pick one with --entry"
        )
    entry = entries[entry_name]
    return parse_subset_spec(entry["size"], where=f"--manifest entry '{entry_name}'"), entry


def make_subset(args):
    """
    Select the subset and write it.

    Args:
        args (argparse.Namespace): from :func:`parse_args`.

    Returns:
        dict: the subset's statistics (see ``rethink_d2.data.subsets.subset_stats``).
    """
    json_file = args.json or _json_of(args.dataset)
    coco = read_coco_json(json_file, f"--dataset '{args.dataset}'" if args.dataset else "--json")
    eligible = coco_eligible_ids(coco)
    if args.manifest:
        spec, entry = _manifest_selection(args.manifest, args.entry)
        positions = choose_positions(
            eligible,
            spec,
            image_ids=entry["image_ids"],
            what=f"'{json_file}'",
            manifest=args.manifest,
        )
        seed = entry.get("seed")
    else:
        spec = parse_subset_spec(args.size, where="--size")
        seed = check_subset_seed(args.seed, "--seed")
        positions = choose_positions(eligible, spec, seed=seed, what=f"'{json_file}'")
    ids = [eligible[p] for p in positions]
    info = {"source": os.path.abspath(json_file), "size": spec.text, "seed": seed, "image_ids": ids}
    subset = coco_subset(coco, ids, {"rethink_d2_subset": info})
    write_json_atomic(subset, args.output, separators=(",", ":"))
    stats = coco_stats(subset)
    print(
        f"wrote {args.output}: {stats['images']} of {len(eligible)} eligible images "
        f"({len(coco['images'])} in total), {stats['instances']} instances "
        f"(+{stats['crowd_instances']} crowd), subset size {spec.text}, seed {seed}"
    )
    print("instances per category: " + json.dumps(stats["per_category"]))
    print(
        f"categories with zero instances ({len(stats['zero_instance_categories'])}): "
        + json.dumps(stats["zero_instance_categories"])
    )
    return stats


def main(argv=None):
    """Command-line entry point; bad input exits with status 2 and one line on stderr."""
    args = parse_args(argv)
    try:
        make_subset(args)
    except RethinkError as e:
        sys.exit(report_user_error(e))


if __name__ == "__main__":
    main()
