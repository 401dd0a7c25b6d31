"""The plugin contract: one hook per kind of component, plus one for CLI commands.

Each ``register_*`` hook receives a ``register`` callable bound to the plugin being
loaded, so the core owns naming, duplicates and provenance (the simonw/llm style).
Call it once per component::

    register(name, factory, *, options=OptionsDataclass, description="", detect=None,
             argument=None, variants=None)

``options`` is a stdlib ``@dataclass`` whose fields are the component's settings; the
core validates keys and types before calling ``factory(options_instance, **context)``.
``argument`` names the option that receives the text after ``NAME:`` in a spec such as
``timm:resnet18`` or ``folder:/data/photos``; ``variants`` is a callable listing the
names that may follow the colon (used by ``pixdex list``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # type-only imports keep `import pixdex.hookspecs` free of click and torch
    import click

    from pixdex.components import Register

hookspec = pluggy.HookspecMarker("pixdex")
hookimpl = pluggy.HookimplMarker("pixdex")


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones: ``factory(options, *, data: DataInfo) -> nn.Module``.

    ``data`` carries ``in_chans``, ``native_size`` and ``num_classes``. The module lives on
    the CPU, maps ``float[B, C, H, W]`` to ``float[B, D]``, and exposes ``.embed_dim`` (D)
    and ``.data_config`` (dict with ``input_size``, ``mean``, ``std``, ``interpolation``).
    """


@hookspec
def register_transforms(register: Register) -> None:
    """Register transforms: ``factory(options, *, train: bool, data_config) -> Transform``.

    A Transform has ``.load(PIL.Image) -> uint8[C, H, W]`` (resize, crop, channels) and
    ``.batch(uint8[B, C, H, W] on device) -> float`` (augmentation when ``train``, then
    normalisation). Tensor-resident and GPU paths call only ``.batch``.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register losses: ``factory(options, *, embed_dim, num_classes) -> nn.Module``.

    The module maps ``(embeddings, labels) -> scalar loss``, declares ``.metric`` (the
    search metric its embeddings expect: "cosine", "l2" or "ip"), and may offer
    ``.logits(embeddings)`` (a classifier), ``.batch_sampler = ("pk", P, K)`` and
    ``.soft_targets = True`` (``labels`` may also be float[B, num_classes] class
    probabilities: mixup and CutMix need it, and refuse losses without it).
    """


@hookspec
def register_indexes(register: Register) -> None:
    """Register retrieval indexes: ``factory(options, *, dim, metric) -> Index``.

    An Index has ``build(float32[N, D])`` (row i is internal id i),
    ``search(float32[Q, D], k) -> (int64[Q, k], float32[Q, k])`` (higher score is more
    similar; id -1 pads when k > N), ``save(staging_dir) -> list[str]`` (file names it
    wrote) and ``load(dir, mmap=True)``, called only after the core verified the manifest.

    Optional: ``add(vectors, *, all_vectors)`` appends rows as ids ``len(index)``... to an
    index loaded with ``mmap=False`` (``all_vectors``: every row, for re-measuring recall);
    `index add` then grows the committed index instead of building it again from every row,
    which stays the fallback for plugins without it (and for `index remove`, which renumbers
    rows).

    Optional, an index that holds the rows itself (a vector database): ``holds_items = True``
    and then the core writes no ``embeddings.npy``/``items.jsonl`` and calls instead
    ``build(vectors, *, items, meta)`` (``items``: an iterable of the rows' item records,
    read once; ``meta``: a dict to keep beside them), ``add(vectors, *, items)``,
    ``remove(rows)`` (later rows move up), each writing a *new version* that nothing
    serves until ``publish()``, which the core calls after the folder's commit (and
    ``discard()`` when that commit fails); ``len(index)``, ``describe() -> {count, dim,
    metric, meta}`` (checked against the manifest on every open), ``items(rows)``,
    ``vectors(rows)``, ``scan(with_vectors=True)`` yielding ``(rows, vectors, items)``
    batches in row order, and ``search(queries, k, *, label=None)`` (``label``: only rows
    whose item has it). ``save`` writes only what finds the version again (a connection
    file, never a credential). ``qdrant`` implements it.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset readers: ``factory(options, *, spec) -> Dataset``.

    Pass ``detect=callable(path) -> bool`` to ``register`` so a plain path can be
    recognised. A Dataset has ``.classes`` (sorted class names, [] if unlabelled),
    ``.skipped`` (listing-time skip reports), ``.splits()``, ``.items(split)`` returning
    ``(path or key, class name or None)`` pairs, and optionally ``.as_tensors(split) ->
    (uint8[N, C, H, W], int64[N] class indices)`` so training never round-trips through PIL.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands or command groups to the ``pixdex`` click group."""
