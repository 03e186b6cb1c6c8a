"""Training samplers chosen by name from a registry (Detectron2 chooses them by if/elif).

``DATALOADER.SAMPLER_TRAIN`` names an entry of ``SAMPLER_REGISTRY``: a callable
``(cfg, dataset) -> torch.utils.data.Sampler`` registered under that name. Detectron2's
``TrainingSampler``, ``RepeatFactorTrainingSampler`` and ``RandomSubsetTrainingSampler`` are
registered here, plus ``SubsetTrainingSampler``: a subset at the sampler level (the dataset object
stays whole, e.g. for repeat factors computed on all of it) with the same deterministic, nested
draw as ``<dataset>@<size>`` names. Add your own with::

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
from .manifest import dicts_stats, find_entry, make_entry, read_manifest
from .subset_spec import (
    check_subset_seed,
    choose_positions,
    has_usable_annotation,
    image_key,
    is_subset_name,
    parse_subset_spec,
)

logger = logging.getLogger(__name__)

SAMPLER_REGISTRY = Registry("RETHINK_SAMPLER")
SAMPLER_REGISTRY.__doc__ = """
Training samplers by ``DATALOADER.SAMPLER_TRAIN`` name: ``(cfg, dataset) -> Sampler``, where
``dataset`` is the list of dataset dicts of ``DATASETS.TRAIN``.
"""

# Built-in samplers as ``(cfg, dataset) -> factory``, ``factory(order_seed) -> Sampler``: what a
# resumed run needs to rebuild the stream of a run whose SEED was random (SEED < 0).
_ORDER_FACTORIES = {}


def _builtin_sampler(name, registered=True):
    """
    Register ``prepare(cfg, dataset) -> factory`` as the order factory of sampler ``name`` and,
    unless ``registered`` is False, the registry entry ``name(cfg, dataset)``:
    ``factory(<order seed of cfg>)``, documented by ``prepare``'s docstring.
    """

    def register(prepare):
        _ORDER_FACTORIES[name] = prepare
        if registered:

            def build(cfg, dataset):
                return prepare(cfg, dataset)(_order_seed(cfg))

            build.__name__ = build.__qualname__ = name
            build.__doc__ = prepare.__doc__
            SAMPLER_REGISTRY.register(build)
        return prepare

    return register


# Detectron2 samplers that its own loader builds from cfg (they reload DATASETS.TRAIN per name);
# build_train_sampler returns None for them and the loader lets Detectron2 choose.
DETECTRON2_CFG_SAMPLERS = ("WeightedTrainingSampler", "WeightedCategoryTrainingSampler")
SUBSET_SAMPLER = "SubsetTrainingSampler"


def _known_samplers():
    return sorted(name for name, _ in SAMPLER_REGISTRY) + list(DETECTRON2_CFG_SAMPLERS)


def _order_seed(cfg):
    """cfg.SEED for the sampling order; a shared random seed when SEED < 0 (as Detectron2)."""
    return cfg.SEED if cfg.SEED >= 0 else None


def check_sampler_config(cfg):
    """
    Validate ``DATALOADER.SAMPLER_TRAIN`` and the sampler keys of ``RETHINK.DATA``.

    Args:
        cfg (CfgNode): config with the ``RETHINK`` node.

    Raises:
        ConfigError: unknown sampler, or subset keys that the sampler would ignore.
        DatasetError: a bad ``RETHINK.DATA.SAMPLER_SUBSET`` size.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    data = cfg.RETHINK.DATA
    if name not in SAMPLER_REGISTRY and name not in DETECTRON2_CFG_SAMPLERS:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{name}' is not a registered sampler; use one of "
            f"{_known_samplers()} or register yours in rethink_d2.data.SAMPLER_REGISTRY"
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
        torch.utils.data.Sampler or None: None for samplers that Detectron2's own loader builds
        from cfg (``DETECTRON2_CFG_SAMPLERS``).

    Raises:
        ConfigError: unknown sampler name (the message lists the registered ones).
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name in DETECTRON2_CFG_SAMPLERS and name not in SAMPLER_REGISTRY:
        return None
    check_sampler_config(cfg)
    logger.info(f"Using training sampler {name}")
    return SAMPLER_REGISTRY.get(name)(cfg, dataset)


@_builtin_sampler("TrainingSampler")
def _training_factory(cfg, dataset):
    """Detectron2's TrainingSampler over the whole dataset."""
    size = len(dataset)
    return lambda seed: d2_samplers.TrainingSampler(size, seed=seed)


@_builtin_sampler("RepeatFactorTrainingSampler")
def _repeat_factor_factory(cfg, dataset):
    """Detectron2's RepeatFactorTrainingSampler (DATALOADER.REPEAT_THRESHOLD, REPEAT_SQRT)."""
    factors = d2_samplers.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
    )
    return lambda seed: d2_samplers.RepeatFactorTrainingSampler(factors, seed=seed)


@_builtin_sampler("RandomSubsetTrainingSampler")
def _random_subset_factory(cfg, dataset):
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
    size = len(dataset)
    return lambda seed: d2_samplers.RandomSubsetTrainingSampler(
        size, ratio, seed_shuffle=seed, seed_subset=seed
    )


def select_subset_indices(
    dataset, spec, seed=None, image_ids=None, what="the subset", manifest=None
):
    """
    The sampler-level subset: the same draw as a ``<dataset>@<size>`` name, on dataset dicts.

    Args:
        dataset (list[dict]): dataset dicts.
        spec, seed, image_ids, what, manifest: as in :func:`subset_spec.choose_positions`.

    Returns:
        tuple[list[int], list, int]: indices into ``dataset`` (selection order), their image
        ids, and the number of eligible images (at least one non-crowd annotation).
    """
    if not isinstance(dataset, (list, tuple)):
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{SUBSET_SAMPLER}' needs a list of dataset dicts, got a "
            f"{type(dataset).__name__}; use a '<dataset>@<size>' name in DATASETS.TRAIN instead"
        )
    eligible = [i for i, record in enumerate(dataset) if has_usable_annotation(record)]
    keys = [image_key(dataset[i]) for i in eligible]
    positions = choose_positions(keys, spec, seed, image_ids, what, manifest)
    return [eligible[p] for p in positions], [keys[p] for p in positions], len(eligible)


class SubsetTrainingSampler(Sampler):
    """
    An infinite, shuffled stream over a fixed subset of the dataset's indices, sharded by rank
    (like Detectron2's ``TrainingSampler``). The subset comes from ``RETHINK.DATA.SUBSET_SEED``
    (or a manifest), the order from ``SEED``: changing the run seed never changes the images.
    With ``DATALOADER.REPEAT_THRESHOLD > 0`` the subset is sampled with LVIS repeat factors
    computed on the full dataset.

    ``SubsetTrainingSampler(cfg, dataset)`` builds it from a config (``@configurable``).
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
            record (dict or None): the subset's manifest entry (see ``manifest.make_entry``).
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
        """
        Args:
            cfg (CfgNode): uses ``RETHINK.DATA.{SAMPLER_SUBSET,SUBSET_SEED,SUBSET_MANIFEST}``,
                ``SEED``, ``DATALOADER.{REPEAT_THRESHOLD,REPEAT_SQRT}`` and ``DATASETS.TRAIN``.
            dataset (list[dict]): the training dataset dicts.

        Returns:
            dict: keyword arguments of ``__init__``.
        """
        data = cfg.RETHINK.DATA
        spec = parse_subset_spec(data.SAMPLER_SUBSET, where="RETHINK.DATA.SAMPLER_SUBSET")
        base = "+".join(cfg.DATASETS.TRAIN)
        image_ids, seed, selection = None, check_subset_seed(data.SUBSET_SEED), "keyed-hash"
        if data.SUBSET_MANIFEST:
            manifest = read_manifest(data.SUBSET_MANIFEST)
            entry = find_entry(manifest, SUBSET_SAMPLER, base, "sampler", data.SUBSET_MANIFEST)
            image_ids, seed, selection = (
                entry["image_ids"],
                None,
                f"manifest:{data.SUBSET_MANIFEST}",
            )
        indices, ids, num_eligible = select_subset_indices(
            dataset,
            spec,
            seed,
            image_ids,
            f"{SUBSET_SAMPLER} '{data.SAMPLER_SUBSET}'",
            data.SUBSET_MANIFEST,
        )
        repeat_factors = None
        if cfg.DATALOADER.REPEAT_THRESHOLD > 0:
            factors = (
                d2_samplers.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                    dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
                )
            )
            repeat_factors = factors[torch.as_tensor(indices)]
        subset = [dataset[i] for i in indices]
        classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        record = make_entry(
            "sampler",
            base,
            data.SAMPLER_SUBSET,
            seed,
            selection,
            ids,
            num_eligible,
            len(dataset),
            dicts_stats(subset, classes),
        )
        logger.info(
            f"{SUBSET_SAMPLER}: {len(indices)} of {num_eligible} eligible images of {base} "
            f"(selection {selection}, subset seed {seed}, order seed {_order_seed(cfg)})"
        )
        return {
            "subset_indices": indices,
            "repeat_factors": repeat_factors,
            "seed": _order_seed(cfg),
            "record": record,
        }

    @staticmethod
    def local_indices(subset_indices, seed, rank, world_size, shuffle=True, repeat_factors=None):
        """
        The infinite index stream of one rank (pure: no process group needed).

        Args:
            subset_indices (Tensor or list[int]): dataset indices of the subset.
            seed (int): seed of the order.
            rank (int): this process's rank.
            world_size (int): number of processes.
            shuffle (bool): shuffle every pass.
            repeat_factors (Tensor or None): a repeat factor per subset index.

        Returns:
            iterator[int]: ``stream[rank::world_size]`` of the shared stream.
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


SAMPLER_REGISTRY.register(SubsetTrainingSampler)


@_builtin_sampler(SUBSET_SAMPLER, registered=False)  # the class is the entry
def _subset_factory(cfg, dataset):
    kwargs = SubsetTrainingSampler.from_config(cfg, dataset)
    return lambda seed: SubsetTrainingSampler(**{**kwargs, "seed": seed})


class ResumableSampler(Sampler):
    """
    A rank's training stream that can continue exactly where an earlier run of it stopped.

    The built-in samplers are deterministic infinite streams of one seed: a position in them is
    a number of indices to skip, plus (with aspect-ratio grouping) the indices that sat in the
    grouping buckets. It yields ``carry``, then ``stream[skip:]`` of the wrapped sampler.

    Args:
        factory (callable or None): ``factory(seed) -> Sampler``, the stream of a given order
            seed; None when the sampler cannot be rebuilt for another seed.
        seed (int or None): the order seed of ``sampler``.
        sampler (Sampler or None): the stream; default ``factory(seed)``.
    """

    def __init__(self, factory, seed, sampler=None):
        self._factory = factory
        self.seed = seed
        self.sampler = factory(seed) if sampler is None else sampler
        self.skip = 0
        self.carry = []

    @property
    def record(self):
        """dict or None: the manifest entry of a subset sampler (see ``manifest.make_entry``)."""
        return getattr(self.sampler, "record", None)

    def reseed(self, seed):
        """
        Rebuild the stream for another order seed (to continue a run whose SEED was < 0).

        Args:
            seed (int): the order seed of the run to continue.

        Returns:
            bool: False when the sampler cannot be rebuilt (a sampler registered without a
            factory): the stream keeps its seed.
        """
        if seed == self.seed:
            return True
        if self._factory is None or seed is None:
            return False
        self.sampler, self.seed = self._factory(seed), seed
        return True

    def __getstate__(self):
        # Loader workers (spawned: pickled) only iterate; the factory may be a closure.
        return {**self.__dict__, "_factory": None}

    def __iter__(self):
        # Runs in every loader worker (each shards the stream): skipping is cheap index work.
        yield from self.carry
        yield from itertools.islice(iter(self.sampler), self.skip, None)


def build_resumable_sampler(cfg, dataset):
    """
    :func:`build_train_sampler`, wrapped as a :class:`ResumableSampler` with a concrete seed.

    With ``SEED < 0`` the order seed is drawn once and shared by all ranks (a collective:
    every rank must call this), so that a checkpoint can store it.

    Args:
        cfg (CfgNode): the config.
        dataset (list[dict]): dataset dicts of ``DATASETS.TRAIN``.

    Returns:
        ResumableSampler or None: None for the samplers Detectron2's loader builds from cfg.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name in DETECTRON2_CFG_SAMPLERS and name not in SAMPLER_REGISTRY:
        return None
    check_sampler_config(cfg)
    seed = _order_seed(cfg)
    if seed is None:
        seed = int(comm.shared_random_seed())
    logger.info(f"Using training sampler {name} (order seed {seed})")
    prepare = _ORDER_FACTORIES.get(name)
    if prepare is not None:
        return ResumableSampler(prepare(cfg, dataset), seed)
    # A sampler registered by the user: its stream is resumable when deterministic, but it
    # cannot be rebuilt for another seed.
    seeded = cfg.clone()
    seeded.defrost()
    seeded.SEED = seed
    return ResumableSampler(None, seed, SAMPLER_REGISTRY.get(name)(seeded, dataset))


def grouped_stream_position(stream, is_wide, batch_size, num_batches):
    """
    Where a stream stands after Detectron2's ``AspectRatioGroupedDataset`` made ``num_batches``
    batches of it (pure; mirrors its two buckets, width > height and the rest).

    The grouping pulls indices in stream order and emits a bucket as soon as it holds
    ``batch_size`` items, so the last pulled index completes the last batch.

    Args:
        stream (iterable[int]): the dataset indices, in the order the grouping pulls them.
        is_wide (sequence[bool]): per dataset index, whether width > height.
        batch_size (int): images per batch of this process.
        num_batches (int): batches made so far.

    Returns:
        tuple[int, list[int]]: how many indices were pulled from ``stream``, and the indices
        still in the buckets, in the order they were pulled.
    """
    buckets = ([], [])
    pulled = made = 0
    if num_batches <= 0:
        return 0, []
    for index in stream:
        bucket = buckets[0 if is_wide[index] else 1]
        bucket.append((pulled, index))
        pulled += 1
        if len(bucket) == batch_size:
            del bucket[:]
            made += 1
            if made == num_batches:
                break
    return pulled, [index for _, index in sorted(buckets[0] + buckets[1])]
