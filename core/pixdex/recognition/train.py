"""The training loop and the run folder it commits after every epoch.

One epoch: a seeded permutation of the training items, on-device augmentation
(``transform.batch``), AMP on CUDA, validation, then an atomic commit of
``last.safetensors`` + ``last.json`` (exact resume), ``history.csv``, ``skipped.jsonl``,
``model.safetensors`` when validation improved, and ``pixdex.json`` last.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pixdex.artifacts import FolderWriter, crash_point, jsonl_bytes, load_safetensors, read_json, tensors_to_bytes
from pixdex.config import AUTO_BACKBONE, Config, validate_component
from pixdex.data.prepare import Split, measure, prepare_training
from pixdex.data.sources import make_source
from pixdex.device import placement
from pixdex.errors import ConfigError, PixdexError, UsageError
from pixdex.pipeline.inference import autocast, forward_batches
from pixdex.pipeline.runs import (
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    RUN_MANIFEST,
    Pipeline,
    build_pipeline,
    data_info_record,
    now,
    versions,
)
from pixdex.plugins import PluginSet
from pixdex.recognition import recipe as recipes
from pixdex.recognition.checkpoint import optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state
from pixdex.recognition.ema import WeightAverage
from pixdex.recognition.mixing import BatchMixer, MixSettings
from pixdex.recognition.recipe import Recipe, choose_backbone, drops_last, plan
from pixdex.recognition.schedule import lr_factor, make_optimizer, set_lr
from pixdex.world import World

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_second",
    "best",  # 1 on the epoch whose weights model.safetensors holds, else 0
    "ema_val_loss",  # validation of the weight average (train.ema_decay > 0), else empty
    "ema_val_accuracy",
]
RESUMABLE_TRAIN_KEYS = ("epochs", "early_stop")  # --resume may change these [train] keys
KNN_REFERENCE = 2000  # training images validation is matched against when the loss has no classifier


def knn_labels(queries: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, metric: str) -> torch.Tensor:
    """The label of each query's nearest reference embedding (cosine, l2 or ip)."""
    q, r = queries.float(), reference.float().to(queries.device)
    if metric == "cosine":
        q, r = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(r, dim=1)
    scores = q @ r.T
    if metric == "l2":
        scores = 2 * scores - (r * r).sum(1)[None, :]
    return labels.to(queries.device)[scores.argmax(1)]


LOSS_TIE_MARGIN = 1e-3  # a tie in accuracy is broken only by a loss this much lower


def better(new: tuple[float, ...], old: tuple[float, ...]) -> bool:
    """Whether validation score ``new`` beats ``old``: ``(accuracy, -loss)`` compares the
    accuracy first, then breaks a tie by a loss lower by at least :data:`LOSS_TIE_MARGIN`
    (so a flat run does not "improve" by rounding); ``(-loss,)`` compares the loss."""
    if new[0] != old[0] or len(new) < 2 or len(old) < 2:
        return new[0] > old[0]
    return new[1] > old[1] + LOSS_TIE_MARGIN


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    history: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    manifest: dict[str, Any]


def _history_csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def read_history(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        out.append(
            {
                k: (int(v) if k in ("epoch", "best") else (float(v) if v not in ("", None) else None))
                for k, v in row.items()
                if v is not None  # runs written before a column existed lack it
            }
        )
    return out


class _Step(torch.nn.Module):
    """Forward and loss in one module call, so DistributedDataParallel sees (and
    synchronises) the head's parameters as well as the backbone's."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.pipeline(images)
        return emb, self.pipeline.head(emb, labels)


def shard(order: torch.Tensor, world: World, block: int) -> torch.Tensor:
    """This process's share of an epoch: whole blocks (batches) dealt round-robin, the
    same number to every process, so no process waits on a batch the others lack."""
    if not world.distributed:
        return order
    blocks = len(order) // block
    per_rank = blocks // world.size
    if per_rank == 0:
        raise PixdexError(
            f"{world.size} processes need at least {world.size} batches per epoch; "
            f"lower --batch-size or use fewer processes"
        )
    grid = order[: blocks * block].view(blocks, block)
    return grid[world.rank :: world.size][:per_rank].reshape(-1)


class Trainer:
    """Trains one run; see :func:`train`."""

    def __init__(
        self,
        pset: PluginSet,
        config: Config,
        data_spec: str,
        run_dir: Path,
        *,
        world: World,
        notify: Callable[[str], None],
        progress: bool,
    ) -> None:
        self.pset, self.config, self.data_spec, self.run_dir = pset, config, data_spec, run_dir
        self.world, self.notify, self.progress = world, notify, progress
        self.t = config["train"]
        self.seed = int(self.t["seed"])
        self.pretrained = False
        self.stopped_early = False

    def setup(self) -> None:
        cfg, data = self.config, self.config["data"]
        runtime = cfg["runtime"]
        self.place = placement(runtime["device"], runtime["precision"], world=self.world, notify=self.notify)
        torch.manual_seed(self.seed)
        self.prep = prepare_training(self.data_spec, self.pset, data, self.seed)
        if len(self.prep.classes) < 2:
            raise PixdexError(f"{self.data_spec} has {len(self.prep.classes)} class; a classifier needs at least 2")
        self.info = measure(self.prep, data["max_pixels"], len(self.prep.classes), self.seed)
        self.backbone_rule = self.choose_backbone()
        torch.manual_seed(self.seed)  # the model's initial weights depend on the seed alone
        built = build_pipeline(self.pset, cfg, self.info)
        self.model: Pipeline = built.pipeline.to(self.place.device)
        if self.place.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.world.distributed and self.place.device.startswith("cuda"):
            # batch-norm statistics over the global batch (SyncBatchNorm runs on GPUs only;
            # on CPU/gloo each process normalises its own shard)
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._ddp: Any = None
        self._ddp_frozen: bool | None = None
        self.train_t, self.eval_t, self.data_config = built.train_transform, built.eval_transform, built.data_config
        self.pk = self._pk_request()
        self.recipe = self.size_recipe()
        common = dict(
            runtime=runtime,
            device=self.place.device,
            max_pixels=data["max_pixels"],
            seed=self.seed,
            opener=getattr(self.prep.dataset, "image", None),
        )
        self.train_src = make_source(
            self.prep.train.keys,
            self.prep.train.labels,
            self.train_t,
            images=self.prep.images_of(self.prep.train),
            **common,
        )
        self.val_src = make_source(
            self.prep.val.keys, self.prep.val.labels, self.eval_t, images=self.prep.images_of(self.prep.val), **common
        )
        self.reference_src = self._reference_source(common) if not self.model.has_classifier else None
        self.optimizer = make_optimizer(self.model, self.t)
        self.mixer = self._mixer()
        self.ema = self._weight_average()
        self.best_weights = "live"  # which weights model.safetensors holds: "live" or "ema"
        if self.pk is not None:  # the loss asks for P classes x K images per batch
            self.train_src.batch_size = self.pk[0] * self.pk[1]
        n_train = len(self.train_src)
        self.drop_last = self.pk is not None or drops_last(n_train, self.train_src.batch_size)
        taken = len(self.epoch_order(0))  # whole batches per process under DDP, P x K blocks
        self.steps_per_epoch = max(
            1, taken // self.train_src.batch_size if self.drop_last else -(-taken // self.train_src.batch_size)
        )
        schedule_epochs = self.t["schedule_epochs"] or self.t["epochs"]
        self.total_steps = schedule_epochs * self.steps_per_epoch
        self.warmup_steps = int(round(self.t["warmup_epochs"] * self.steps_per_epoch))
        self.patience = int(self.t["early_stop"])
        if not len(self.val_src):
            kept = "the last epoch's average of the weights" if self.ema is not None else "the last epoch"
            self.notify(
                "pixdex: note: no validation images (val_fraction 0, or classes too small to split): "
                f"model.safetensors keeps {kept} and early stopping is off"
            )
            self.patience = 0
        self.notify(self.recipe_line())
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.step, self.best = 0, 0, None
        self.best_epoch = 0

    # --- automatic choices: the backbone and the recipe (recognition/recipe.py) ------------
    def choose_backbone(self) -> str | None:
        """Resolve ``backbone = "auto"`` from the measured data; returns the rule applied."""
        cfg = self.config
        if cfg["backbone"]["name"] != AUTO_BACKBONE:
            return None
        choice = choose_backbone(
            self.info.in_chans,
            self.info.short_side,
            pretrained_installed=recipes.pretrained_available(),
            mixed_sizes=self.info.native_size is None,
        )
        cfg.sections["backbone"] = validate_component("backbone", choice.backbone, self.pset.registry)
        preset = self.pset.registry_file.presets.get(choice.transform_preset or "", {})
        if "transform" in preset and not cfg.is_explicit("transform"):
            cfg.sections["transform"] = validate_component("transform", dict(preset["transform"]), self.pset.registry)
        for key, value in choice.train.items():
            if not cfg.is_explicit("train", key):
                cfg.sections["train"][key] = value
        if choice.note:
            self.notify(f"pixdex: note: {choice.note}")
        self.pretrained = choice.pretrained
        return choice.rule

    def size_recipe(self) -> Recipe:
        """Resolve ``batch_size``, ``epochs`` and ``early_stop`` set to "auto" into the
        concrete values the run records (so --resume repeats them)."""
        runtime, t = self.config["runtime"], self.t
        n_train, size = len(self.prep.train.keys), self.world.size
        max_fit = None
        if runtime["batch_size"] == "auto" and self.pk is None:
            from pixdex.pipeline.memory import max_train_batch

            max_fit = size * max_train_batch(self.model, self.eval_t, self.place, runtime)
        explicit_batch = runtime["batch_size"] if runtime["batch_size"] == "auto" else runtime["batch_size"] * size
        recipe = plan(
            n_train,
            batch_size=explicit_batch if self.pk is None else self.pk[0] * self.pk[1] * size,
            epochs=t["epochs"],
            early_stop=t["early_stop"],
            pretrained=self.pretrained or bool(self.config["backbone"].get("pretrained")),
            max_fit=max_fit,
        )
        self.auto_keys = [
            k
            for k, v in (
                ("batch_size", runtime["batch_size"]),
                ("epochs", t["epochs"]),
                ("early_stop", t["early_stop"]),
            )
            if v == "auto"
        ]
        runtime["batch_size"] = max(1, recipe.batch_size // size)
        t["epochs"], t["early_stop"] = recipe.epochs, recipe.early_stop
        return recipe

    def recipe_line(self) -> str:
        """One notice line: what the run trains with, and what was chosen automatically."""
        r, size = self.recipe, self.world.size
        batch = f"batch {r.batch_size}" + (f" ({r.batch_size // size} per process x {size})" if size > 1 else "")
        stop = f"early stop after {r.early_stop} epochs without improvement" if self.patience else "no early stop"
        parts = [
            f"pixdex: recipe: {len(self.prep.train.keys):,} training images -> {batch}, {r.epochs} epochs "
            f"({self.steps_per_epoch * r.epochs:,} steps), {stop}",
        ]
        if self.auto_keys:
            parts.append(f"auto: {', '.join(self.auto_keys)}")
        if self.backbone_rule:
            parts.append(f"backbone auto: {self.backbone_rule}")
        parts.extend(r.reasons)
        return "; ".join(parts)

    def _reference_source(self, common: dict[str, Any]) -> Any:
        """A seeded, capped sample of the training split that validation images are matched
        against (kNN accuracy), for losses without a classifier."""
        split = self.prep.train
        gen = torch.Generator().manual_seed(self.seed + 17)
        pick = torch.randperm(len(split.keys), generator=gen)[:KNN_REFERENCE].tolist()
        sample = Split(
            [split.keys[i] for i in pick], [split.labels[i] for i in pick], [split.positions[i] for i in pick]
        )
        return make_source(sample.keys, sample.labels, self.eval_t, images=self.prep.images_of(sample), **common)

    def _mixer(self) -> BatchMixer | None:
        t = self.t
        settings = MixSettings(t["mixup_alpha"], t["cutmix_alpha"], t["mix_prob"], t["mix_switch_prob"])
        for key in ("mixup_alpha", "cutmix_alpha"):
            if t[key] < 0:
                raise ConfigError(f"train.{key} must be >= 0 (0 turns it off), got {t[key]}")
        for key in ("mix_prob", "mix_switch_prob"):
            if not 0.0 <= t[key] <= 1.0:
                raise ConfigError(f"train.{key} must be between 0 and 1, got {t[key]}")
        if not settings.enabled:
            return None
        loss = self.config["loss"]["name"]
        if not getattr(self.model.head, "soft_targets", False):
            raise ConfigError(
                f"mixup/cutmix blend labels, and loss '{loss}' takes only hard labels; "
                "use --loss cross-entropy, or set train.mixup_alpha = 0 and train.cutmix_alpha = 0"
            )
        return BatchMixer(settings, len(self.prep.classes))

    def _weight_average(self) -> WeightAverage | None:
        decay = float(self.t["ema_decay"])
        if decay == 0:
            return None
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema_decay must be 0 (off) or between 0 and 1, such as 0.999; got {decay}")
        return WeightAverage(self.model, decay)

    def best_state(self) -> dict[str, torch.Tensor]:
        """The weights model.safetensors gets: the live ones or the average, whichever
        validated better (:meth:`improved`)."""
        if self.best_weights == "ema" and self.ema is not None:
            return dict(self.ema.state)
        return dict(self.model.state_dict())

    def _pk_request(self) -> tuple[int, int] | None:
        request = getattr(self.model.head, "batch_sampler", None)
        if request is None:
            return None
        if not (isinstance(request, tuple) and len(request) == 3 and request[0] == "pk"):
            raise PixdexError(f"loss '{self.config['loss']['name']}' asks for an unknown batch sampler {request!r}")
        p = min(int(request[1]), len(self.prep.classes))
        return p, int(request[2])

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's items of one epoch, in batch order: a permutation seeded by
        (seed, epoch), or P x K blocks, dealt to the processes batch by batch."""
        from pixdex.data.sources import epoch_order, pk_order

        if self.pk is None:
            order = epoch_order(len(self.train_src), self.seed, epoch, shuffle=True)
        else:
            labels = torch.tensor(self.prep.train.labels, dtype=torch.long)
            order = pk_order(labels, self.pk[0], self.pk[1], self.seed, epoch)
        return shard(order, self.world, self.train_src.batch_size)

    def step_module(self, frozen: bool) -> Any:
        """The module one training step calls: the pipeline, or its DDP wrapper (rebuilt when
        freezing changes which parameters train)."""
        if not self.world.distributed:
            return None
        if self._ddp is None or self._ddp_frozen != frozen:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.world.local_rank] if self.place.device.startswith("cuda") else None
            self._ddp = DistributedDataParallel(_Step(self.model), device_ids=ids)
            self._ddp_frozen = frozen
        return self._ddp

    # --- resume ----------------------------------------------------------------------------
    def restore(self) -> None:
        last = read_json(self.run_dir / "last.json", "checkpoint")
        tensors, _ = load_safetensors(self.run_dir / "last.safetensors", "checkpoint")
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        from pixdex.pipeline.runs import check_weights_fit

        check_weights_fit(self.model, model_state, str(self.run_dir / "last.safetensors"))
        self.model.load_state_dict(model_state)
        optimizer_from_flat(self.optimizer, {k: v.to(self.place.device) for k, v in tensors.items()}, last["optimizer"])
        set_rng_state(last["rng"], tensors)
        if self.ema is not None:
            self.ema.load(
                {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}, last["ema_updates"]
            )
        self.start_epoch, self.step = last["epoch"], last["step"]
        best = last["best"]  # a list in JSON; a bare number in runs written before the tie-break
        self.best = None if best is None else tuple(best) if isinstance(best, list) else (best,)
        self.best_epoch = last["best_epoch"]
        self.best_weights = last.get("best_weights", "live")
        self.history = read_history(self.run_dir / "history.csv")[: self.start_epoch]
        self.notify(f"pixdex: resuming {self.run_dir} after epoch {self.start_epoch}")

    # --- one epoch -------------------------------------------------------------------------
    def frozen(self, epoch: int) -> bool:
        return bool(self.t["freeze_backbone"]) or epoch < int(self.t["unfreeze_after"])

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        model, place = self.model, self.place
        model.train()
        frozen = self.frozen(epoch)
        for p in model.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()  # a linear probe keeps batch-norm statistics fixed too
        ddp = self.step_module(frozen)
        # augmentation draws from torch's RNG: seeded per (seed, epoch, process), so a resumed
        # run and every process draw exactly what an uninterrupted run would
        torch.manual_seed(self.seed * 1_000_003 + epoch * 1_009 + self.world.rank)
        sums = torch.zeros(3, dtype=torch.float64, device=place.device)  # loss*n, correct, n
        bar = self._bar(epoch)
        start, lr = time.perf_counter(), 0.0
        order = self.epoch_order(epoch)
        for x, y, _ in self.train_src.batches(epoch, drop_last=self.drop_last, order=order):
            lr = set_lr(
                self.optimizer,
                lr_factor(
                    self.step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, schedule=self.t["schedule"]
                ),
            )
            if place.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inputs, targets, counted = self.train_t.batch(x), y, y
            if self.mixer is not None:  # soft targets; accuracy counts the larger share's label
                inputs, targets, counted = self.mixer.mix(inputs, y)
            with autocast(place):
                if ddp is not None:
                    emb, loss = ddp(inputs, targets)
                else:
                    emb = model(inputs)
                    loss = model.head(emb, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(model)
            self.step += 1
            with torch.no_grad():
                n = y.shape[0]
                correct = (
                    (model.logits(emb.detach()).argmax(1) == counted).sum() if model.has_classifier else torch.zeros(())
                )
                sums += torch.stack(
                    [
                        loss.detach().double() * n,
                        correct.double().to(sums.device),
                        torch.tensor(float(n), device=sums.device, dtype=torch.float64),
                    ]
                )
            if bar is not None:
                bar.update(1)
                if self.step % 10 == 0:
                    s = sums.tolist()
                    bar.set_postfix(
                        loss=f"{s[0] / s[2]:.4f}",
                        acc=f"{s[1] / s[2]:.3f}",
                        img_s=f"{s[2] / (time.perf_counter() - start):.0f}",
                    )
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        loss_sum, correct, n = self.world.sum(sums.tolist())
        if not math.isfinite(loss_sum):
            raise PixdexError(f"training diverged in epoch {epoch + 1} (loss is not finite); lower --lr")
        return {
            "train_loss": loss_sum / max(n, 1),
            "train_accuracy": correct / max(n, 1) if model.has_classifier else None,
            "lr": lr,
            "seconds": round(seconds, 3),
            "images_per_second": round(n / max(seconds, 1e-9), 1),
        }

    def validate(self) -> dict[str, Any]:
        """Validation loss and accuracy, summed as counts over processes. Without a
        classifier, accuracy is the nearest neighbour's label among the reference sample."""
        model, place = self.model, self.place
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=place.device)
        mine = torch.arange(len(self.val_src))[self.world.rank :: self.world.size]  # counts are summed after
        reference = self._reference_embeddings() if self.reference_src is not None else None

        def loss_and_correct(emb: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if model.has_classifier:
                correct = (model.logits(emb).argmax(1) == y).sum()
            elif reference is not None:
                correct = (knn_labels(emb, *reference, self.metric) == y).sum()
            else:
                correct = torch.zeros((), device=sums.device)
            return model.head(emb, y), correct

        for _, y, _, (loss, correct) in forward_batches(
            model, self.eval_t, self.val_src, place, order=mine, also=loss_and_correct
        ):
            n = y.shape[0]
            sums += torch.stack(
                [
                    loss.double() * n,
                    correct.double().to(sums.device),
                    torch.tensor(float(n), dtype=torch.float64, device=sums.device),
                ]
            )
        loss_sum, correct, n = self.world.sum(sums.tolist())
        if n == 0:
            return {"val_loss": None, "val_accuracy": None}
        scored = model.has_classifier or reference is not None
        return {"val_loss": loss_sum / n, "val_accuracy": correct / n if scored else None}

    @property
    def metric(self) -> str:
        return getattr(self.model.head, "metric", "cosine")

    def _reference_embeddings(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        parts, labels = [], []
        for emb, y, _, _ in forward_batches(self.model, self.eval_t, self.reference_src, self.place):
            parts.append(emb.float())
            labels.append(y)
        if not parts:
            return None
        return torch.cat(parts), torch.cat(labels)

    def _bar(self, epoch: int) -> Any:
        if not self.progress or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.t['epochs']}",
            unit="batch",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def validate_average(self, row: dict[str, Any]) -> None:
        """Validate the weight average too (``ema_val_*`` columns), with the live weights put back after."""
        if self.ema is None:
            return
        with self.ema.swapped_into(self.model):
            scores = self.validate()
        row["ema_val_loss"], row["ema_val_accuracy"] = scores["val_loss"], scores["val_accuracy"]

    def improved(self, row: dict[str, Any]) -> bool:
        """Best by validation accuracy, ties broken by the lower validation loss (else by
        loss alone), of the live weights or their average (which one is kept in
        :attr:`best_weights`); without validation images every epoch counts as the best,
        so the last one is kept (the average, when on).

        The tie-break matters on small validation splits: their accuracy saturates (59
        images at 100% after 2 epochs), and without it the undertrained early epoch would be
        kept and early stopping would end training there."""

        def score(prefix: str) -> tuple[float, ...] | None:
            accuracy, loss = row.get(f"{prefix}val_accuracy"), row.get(f"{prefix}val_loss")
            if accuracy is not None:
                return (accuracy,) if loss is None else (accuracy, -loss)
            return None if loss is None else (-loss,)

        candidates = [(score(""), "live")] + ([(score("ema_"), "ema")] if self.ema is not None else [])
        scored = [(s, which) for s, which in candidates if s is not None]
        if not scored:
            self.best_weights = candidates[-1][1]
            return True
        best, which = max(scored)  # a tie keeps the live weights ("live" > "ema")
        if self.best is None or better(best, self.best):
            self.best, self.best_weights = best, which
            return True
        return False

    # --- the run folder --------------------------------------------------------------------
    def manifest(self, status: str, files: dict[str, str]) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "status": status,
            "created": self.created,
            "updated": now(),
            "config": self.config.to_dict(),
            "data": {
                "spec": self.data_spec,
                "split": self.prep.split_name,
                "classes": self.prep.classes,
                "train_count": len(self.prep.train.keys),
                "val_count": len(self.prep.val.keys),
                "skipped": len(self.skipped()),
                "info": data_info_record(self.info),
            },
            "data_config": self.data_config,
            "embed_dim": int(self.model.backbone.embed_dim),
            "metric": getattr(self.model.head, "metric", "cosine"),
            "has_classifier": self.model.has_classifier,
            "epochs_done": len(self.history),
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "stopped_early": self.stopped_early,
            "recipe": {
                "batch_size": self.recipe.batch_size,
                "per_process_batch_size": self.train_src.batch_size,
                "processes": self.world.size,
                "epochs": int(self.t["epochs"]),
                "steps_per_epoch": self.steps_per_epoch,
                "early_stop": self.patience,
                "auto": list(self.auto_keys),
                "backbone_rule": self.backbone_rule,
            },
            "metrics": {"best": best_row, "last": last},
            "placement": self.place.to_dict(),
            "versions": versions(),
            "files": files,
        }

    def skipped(self) -> list[dict[str, Any]]:
        seen = {s["path"]: s for s in self.prep.skipped}
        for src in (self.train_src, self.val_src):
            for s in src.skipped:
                seen.setdefault(s["path"], s)
        return list(seen.values())

    def checkpoint(self, writer: FolderWriter, epoch: int, improved: bool, status: str) -> None:
        model_state = {k: v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
        rng_json, rng_tensors = rng_state()
        tensors = {f"model.{k}": v for k, v in model_state.items()} | opt_tensors | rng_tensors
        if self.ema is not None:
            tensors |= {f"ema.{k}": v for k, v in self.ema.state.items()}
        writer.write_bytes("last.safetensors", tensors_to_bytes(tensors, {"format": "pixdex-checkpoint"}))
        writer.write_json(
            "last.json",
            {
                "epoch": epoch + 1,
                "step": self.step,
                "best": None if self.best is None else list(self.best),
                "best_epoch": self.best_epoch,
                "best_weights": self.best_weights,
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "optimizer": opt_meta,
                "rng": rng_json,
                "seed": self.seed,
            },
        )
        if improved:
            writer.write_bytes("model.safetensors", tensors_to_bytes(self.best_state(), {"format": "pixdex-model"}))
        writer.write_bytes("history.csv", _history_csv(self.history))
        writer.write_bytes("skipped.jsonl", jsonl_bytes(self.skipped()))
        if status == "complete":
            self.plot(writer)
        crash_point("train:checkpoint")
        self.commit(writer, status)

    def commit(self, writer: FolderWriter, status: str) -> None:
        """Commit what is staged; pixdex.json lists every file of the run with its sha256."""
        committed = writer.commit(
            lambda staged: self.manifest(
                status, {**self.files, **{name: fact["sha256"] for name, fact in staged.items()}}
            )
        )
        self.files = {**self.files, **committed}

    def plot(self, writer: FolderWriter) -> None:
        from pixdex.recognition.plots import plot_history

        png = plot_history(self.history, notify=self.notify)
        if png is not None:
            writer.write_bytes("curves.png", png)

    def mark_best(self) -> None:
        """history.csv's ``best`` column: 1 on the epoch model.safetensors holds."""
        for row in self.history:
            row["best"] = int(row["epoch"] == self.best_epoch)

    def summary(self, row: dict[str, Any]) -> str:
        parts = [f"epoch {row['epoch']}/{self.t['epochs']}: train loss {row['train_loss']:.4f}"]
        if row["train_accuracy"] is not None:
            parts.append(f"acc {row['train_accuracy']:.4f}")
        if row["val_loss"] is not None:
            parts.append(f"| val loss {row['val_loss']:.4f}")
        if row["val_accuracy"] is not None:
            parts.append(f"acc {row['val_accuracy']:.4f}")
        if row.get("ema_val_accuracy") is not None:
            parts.append(f"| ema val acc {row['ema_val_accuracy']:.4f}")
        parts.append(f"| {row['images_per_second']:.0f} img/s, {row['seconds']:.1f}s")
        return " ".join(parts)

    def run(self, writer: FolderWriter | None, resume: bool) -> TrainResult:
        """Train the remaining epochs (call :meth:`setup` first), committing through ``writer``
        (None on the processes that do not write)."""
        self.created = now()
        self.files: dict[str, str] = {}
        if resume:
            self.restore()
            saved = read_json(self.run_dir / RUN_MANIFEST, "run manifest")
            self.created = saved.get("created", self.created)
            self.files = dict(saved.get("files") or {})
            recorded = saved.get("recipe") or {}  # what auto chose when the run started
            self.auto_keys = list(recorded.get("auto", self.auto_keys))
            self.backbone_rule = recorded.get("backbone_rule", self.backbone_rule)
        epochs = int(self.t["epochs"])
        if self.start_epoch >= epochs:
            raise UsageError(
                f"{self.run_dir} already has {self.start_epoch} epochs; pass a larger --epochs to continue"
            )
        if resume and self.patience > 0 and self.start_epoch - self.best_epoch >= self.patience:
            raise UsageError(
                f"{self.run_dir} stopped early after epoch {self.start_epoch} (best epoch {self.best_epoch}); "
                "to train on, resume with --early-stop 0 or a larger patience"
            )
        for epoch in range(self.start_epoch, epochs):
            row = {"epoch": epoch + 1, **self.train_epoch(epoch), **self.validate()}
            self.validate_average(row)
            improved = self.improved(row)
            if improved:
                self.best_epoch = epoch + 1
            self.history.append({k: row.get(k) for k in HISTORY_COLUMNS})
            self.mark_best()
            self.notify(self.summary(row))
            stale = epoch + 1 - self.best_epoch
            last = epoch + 1 == epochs or (self.patience > 0 and stale >= self.patience)
            if last and epoch + 1 < epochs:
                self.stopped_early = True
                self.notify(
                    f"pixdex: early stop after epoch {epoch + 1}: no improvement for {stale} epochs "
                    f"(best epoch {self.best_epoch}); --early-stop 0 trains every epoch"
                )
            if writer is not None:
                if last or (epoch + 1) % max(1, int(self.t["checkpoint_every"])) == 0:
                    self.checkpoint(writer, epoch, improved, "complete" if last else "training")
                elif improved:  # between checkpoints the best weights are still committed at once
                    writer.write_bytes(
                        "model.safetensors", tensors_to_bytes(self.best_state(), {"format": "pixdex-model"})
                    )
                    writer.write_bytes("history.csv", _history_csv(self.history))
                    self.commit(writer, "training")
            if last:
                break
        return TrainResult(
            self.run_dir,
            len(self.history),
            self.best_epoch,
            self.history,
            self.skipped(),
            self.manifest("complete", dict(self.files)),
        )


def train(
    data_spec: str,
    run_dir: str | Path,
    pset: PluginSet,
    config: Config,
    *,
    resume: bool = False,
    force: bool = False,
    world: World | None = None,
    notify: Callable[[str], None] | None = None,
    progress: bool = True,
    lock_timeout: float = 0.0,
) -> TrainResult:
    """Train a model on ``data_spec`` into ``run_dir`` (committed atomically every epoch).

    ``resume`` continues from the last complete epoch with the saved configuration
    (only ``train.epochs`` and ``[runtime]`` may change). An existing run folder is
    refused unless ``resume`` or ``force``.
    """
    run_dir = Path(run_dir)
    notify = notify or (lambda line: print(line, file=sys.stderr))
    world = world or World()
    exists = (run_dir / RUN_MANIFEST).exists()
    if resume and not (run_dir / "last.json").exists():
        raise UsageError(f"nothing to resume in {run_dir}: it has no last.json checkpoint")
    if exists and not resume and not force:
        raise UsageError(f"{run_dir} already holds a run; use --resume to continue it or --force to replace it")
    trainer = Trainer(pset, config, data_spec, run_dir, world=world, notify=notify, progress=progress)
    trainer.setup()  # data, model and optimiser first: a bad DATA or option leaves no folder behind
    if not world.is_main:
        return trainer.run(None, resume)
    with FolderWriter(run_dir, manifest_name=RUN_MANIFEST, lock_timeout=lock_timeout) as writer:
        if force and not resume:
            for old in ("model.safetensors", "last.safetensors", "last.json", "curves.png", "confusion.png"):
                if writer.exists(old):
                    writer.remove(old)
        return trainer.run(writer, resume)


def resume_config(run_dir: Path, changed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The saved run's configuration; only epochs, early stopping and [runtime] keys given
    explicitly on the command line (``changed``) replace the saved values (none of them
    changes what an epoch computes)."""
    saved = read_json(run_dir / RUN_MANIFEST, "run manifest")["config"]
    for section, values in changed.items():
        for key, value in values.items():
            if section == "runtime" or (section == "train" and key in RESUMABLE_TRAIN_KEYS):
                continue
            if saved.get(section, {}).get(key) == value:
                continue  # repeating the saved value is fine
            raise UsageError(
                f"--resume continues {run_dir} with its saved configuration; {section}.{key} cannot change "
                f"(only --epochs, --early-stop and runtime keys can)"
            )
    merged = {s: dict(v) for s, v in saved.items()}
    merged["runtime"].update(changed.get("runtime", {}))
    for key in RESUMABLE_TRAIN_KEYS:
        if key in changed.get("train", {}):
            merged["train"][key] = changed["train"][key]
    return merged
