"""Training samplers chosen by name from a registry (Detectron2 chooses them by if/elif).

``DATALOADER.SAMPLER_TRAIN`` names an entry of ``SAMPLER_REGISTRY``, a callable
``(cfg, dataset) -> Sampler`` registered under that name: Detectron2's ``TrainingSampler``,
``RepeatFactorTrainingSampler`` and ``RandomSubsetTrainingSampler``, plus
``SubsetTrainingSampler`` (a subset at the sampler level, with the draw of ``<dataset>@<size>``
names). The order seed is ``cfg.SEED``. Add your own with::

    @SAMPLER_REGISTRY.register()
    def MySampler(cfg, dataset):  # the name is the DATALOADER.SAMPLER_TRAIN value
        return ...
"""

import itertools
import logging

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import samplers as d2_samplers
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from torch.utils.data import Sampler

from ..utils.errors import ConfigError, DatasetError
from .subsets import (
    check_subset_seed,
    dicts_stats,
    find_entry,
    is_subset_name,
    make_entry,
    parse_subset_spec,
    read_manifest,
    select_subset_indices,
)

logger = logging.getLogger(__name__)

SAMPLER_REGISTRY = Registry("RETHINK_SAMPLER")
SAMPLER_REGISTRY.__doc__ = """
Training samplers by ``DATALOADER.SAMPLER_TRAIN`` name: ``(cfg, dataset) -> Sampler``, where
``dataset`` is the list of dataset dicts of ``DATASETS.TRAIN``.
"""

# Detectron2 samplers that its own loader builds from cfg (they reload DATASETS.TRAIN per name);
# build_train_sampler returns None for them and the loader lets Detectron2 choose.
DETECTRON2_CFG_SAMPLERS = ("WeightedTrainingSampler", "WeightedCategoryTrainingSampler")
SUBSET_SAMPLER = "SubsetTrainingSampler"


def order_seed(cfg):
    """``cfg.SEED`` for the sampling order; None (a random seed shared by all ranks) if < 0."""
    return cfg.SEED if cfg.SEED >= 0 else None


def check_sampler_config(cfg):
    """
    Validate ``DATALOADER.SAMPLER_TRAIN`` and the sampler keys of ``RETHINK.DATA``.

    Raises:
        ConfigError: unknown sampler, or subset keys that the sampler would ignore.
        DatasetError: a bad ``RETHINK.DATA.SAMPLER_SUBSET`` size.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    data = cfg.RETHINK.DATA
    if name not in SAMPLER_REGISTRY and name not in DETECTRON2_CFG_SAMPLERS:
        known = sorted(n for n, _ in SAMPLER_REGISTRY) + list(DETECTRON2_CFG_SAMPLERS)
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{name}' is not a registered sampler; use one of "
            f"{known} or register yours in rethink_d2.data.SAMPLER_REGISTRY"
        )
    if name == SUBSET_SAMPLER and not data.SAMPLER_SUBSET:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{SUBSET_SAMPLER}' needs RETHINK.DATA.SAMPLER_SUBSET, "
            "e.g. '10k' or '0.1'"
        )
    if data.SAMPLER_SUBSET and name != SUBSET_SAMPLER:
        raise ConfigError(
            f"RETHINK.DATA.SAMPLER_SUBSET '{data.SAMPLER_SUBSET}' only applies to "
            f"DATALOADER.SAMPLER_TRAIN '{SUBSET_SAMPLER}' (it is '{name}'); set one or clear the "
            "other (or use a '<dataset>@<size>' name in DATASETS.TRAIN)"
        )
    if data.SAMPLER_SUBSET:
        parse_subset_spec(data.SAMPLER_SUBSET, where="RETHINK.DATA.SAMPLER_SUBSET")
    has_dataset_subsets = any(is_subset_name(n) for n in cfg.DATASETS.TRAIN)
    if data.SUBSET_MANIFEST and not has_dataset_subsets and name != SUBSET_SAMPLER:
        raise ConfigError(
            f"RETHINK.DATA.SUBSET_MANIFEST '{data.SUBSET_MANIFEST}' is set but no dataset in "
            f"DATASETS.TRAIN is a '<dataset>@<size>' subset and DATALOADER.SAMPLER_TRAIN is not "
            f"'{SUBSET_SAMPLER}'; name the subset or clear the key"
        )


def build_train_sampler(cfg, dataset):
    """
    Build the training sampler named by ``DATALOADER.SAMPLER_TRAIN``.

    Args:
        cfg (CfgNode): the config.
        dataset (list[dict]): dataset dicts of ``DATASETS.TRAIN`` (as given to the loader).

    Returns:
        torch.utils.data.Sampler or None: None for the samplers that Detectron2's own loader
        builds from cfg (``DETECTRON2_CFG_SAMPLERS``).
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name in DETECTRON2_CFG_SAMPLERS and name not in SAMPLER_REGISTRY:
        return None
    check_sampler_config(cfg)
    return SAMPLER_REGISTRY.get(name)(cfg, dataset)


@SAMPLER_REGISTRY.register()
def TrainingSampler(cfg, dataset):
    """Detectron2's TrainingSampler over the whole dataset."""
    return d2_samplers.TrainingSampler(len(dataset), seed=order_seed(cfg))


@SAMPLER_REGISTRY.register()
def RepeatFactorTrainingSampler(cfg, dataset):
    """Detectron2's RepeatFactorTrainingSampler (DATALOADER.REPEAT_THRESHOLD, REPEAT_SQRT)."""
    factors = d2_samplers.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
    )
    return d2_samplers.RepeatFactorTrainingSampler(factors, seed=order_seed(cfg))


@SAMPLER_REGISTRY.register()
def RandomSubsetTrainingSampler(cfg, dataset):
    """
    Detectron2's RandomSubsetTrainingSampler (ratio ``DATALOADER.RANDOM_SUBSET_RATIO``, a key
    that is not in Detectron2's default config). Prefer ``SubsetTrainingSampler``.
    """
    ratio = cfg.DATALOADER.get("RANDOM_SUBSET_RATIO")
    if ratio is None:
        raise ConfigError(
            "DATALOADER.SAMPLER_TRAIN 'RandomSubsetTrainingSampler' needs "
            "DATALOADER.RANDOM_SUBSET_RATIO, which is not in Detectron2's default config; use "
            f"'{SUBSET_SAMPLER}' with RETHINK.DATA.SAMPLER_SUBSET (e.g. '0.1') instead"
        )
    seed = order_seed(cfg)
    return d2_samplers.RandomSubsetTrainingSampler(
        len(dataset), ratio, seed_shuffle=seed, seed_subset=seed
    )


@SAMPLER_REGISTRY.register()
class SubsetTrainingSampler(Sampler):
    """
    An infinite, shuffled stream over a fixed subset of the dataset, sharded by rank (like
    Detectron2's ``TrainingSampler``). The images come from ``RETHINK.DATA.SUBSET_SEED`` (or a
    manifest), the order from ``SEED``: changing the run seed never changes the images. With
    ``DATALOADER.REPEAT_THRESHOLD > 0`` the subset is sampled with LVIS repeat factors computed
    on the full dataset.
    """

    @configurable
    def __init__(
        self, subset_indices, *, repeat_factors=None, shuffle=True, seed=None, record=None
    ):
        """
        Args:
            subset_indices (list[int]): dataset indices of the subset.
            repeat_factors (list[float] or None): a repeat factor per subset index.
            shuffle (bool): shuffle every pass over the subset.
            seed (int or None): seed of the order; None: a random seed shared by all ranks.
            record (dict or None): the subset's manifest entry (``subsets.make_entry``).
        """
        if len(subset_indices) == 0:
            raise DatasetError(f"{SUBSET_SAMPLER} got an empty subset")
        self._indices = torch.as_tensor(list(subset_indices), dtype=torch.int64)
        self._repeat_factors = (
            None if repeat_factors is None else torch.as_tensor(repeat_factors, dtype=torch.float32)
        )
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self.record = record

    @classmethod
    def from_config(cls, cfg, dataset):
        if not isinstance(dataset, (list, tuple)):
            raise ConfigError(
                f"DATALOADER.SAMPLER_TRAIN '{SUBSET_SAMPLER}' needs a list of dataset dicts, got "
                f"a {type(dataset).__name__}; use a '<dataset>@<size>' name in DATASETS.TRAIN "
                "instead"
            )
        data = cfg.RETHINK.DATA
        spec = parse_subset_spec(data.SAMPLER_SUBSET, where="RETHINK.DATA.SAMPLER_SUBSET")
        base = "+".join(cfg.DATASETS.TRAIN)
        image_ids, seed, selection = None, check_subset_seed(data.SUBSET_SEED), "keyed-hash"
        if data.SUBSET_MANIFEST:
            manifest = read_manifest(data.SUBSET_MANIFEST)
            entry = find_entry(manifest, SUBSET_SAMPLER, base, "sampler", data.SUBSET_MANIFEST)
            image_ids, seed = entry["image_ids"], None
            selection = f"manifest:{data.SUBSET_MANIFEST}"
        what = f"{SUBSET_SAMPLER} '{data.SAMPLER_SUBSET}'"
        indices, ids, num_eligible = select_subset_indices(
            dataset, spec, seed, image_ids, what, data.SUBSET_MANIFEST
        )
        repeat_factors = None
        if cfg.DATALOADER.REPEAT_THRESHOLD > 0:
            factors = (
                d2_samplers.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                    dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
                )
            )
            repeat_factors = factors[torch.as_tensor(indices)]
        classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        stats = dicts_stats([dataset[i] for i in indices], classes)
        record = make_entry(
            "sampler", base, data.SAMPLER_SUBSET, seed, selection, ids, num_eligible,
            len(dataset), stats,
        )  # fmt: skip
        logger.info(
            f"{SUBSET_SAMPLER}: {len(indices)} of {num_eligible} eligible images of {base} "
            f"(selection {selection}, subset seed {seed}, order seed {order_seed(cfg)})"
        )
        return {
            "subset_indices": indices,
            "repeat_factors": repeat_factors,
            "seed": order_seed(cfg),
            "record": record,
        }

    @staticmethod
    def local_indices(subset_indices, seed, rank, world_size, shuffle=True, repeat_factors=None):
        """
        The infinite index stream of one rank, ``stream[rank::world_size]`` (pure: no process
        group needed).
        """
        indices = torch.as_tensor(subset_indices, dtype=torch.int64)

        def stream():
            g = torch.Generator()
            g.manual_seed(seed)
            while True:
                epoch = indices
                if repeat_factors is not None:
                    factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
                    whole = torch.trunc(factors)
                    rounded = whole + (torch.rand(len(factors), generator=g) < factors - whole)
                    epoch = indices.repeat_interleave(rounded.long())
                if shuffle:
                    epoch = epoch[torch.randperm(len(epoch), generator=g)]
                yield from epoch.tolist()

        return itertools.islice(stream(), rank, None, world_size)

    def __iter__(self):
        yield from self.local_indices(
            self._indices,
            self._seed,
            self._rank,
            self._world_size,
            self._shuffle,
            self._repeat_factors,
        )
