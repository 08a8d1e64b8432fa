"""Settings of `atomsift pretrain` and `atomsift finetune`: pydantic models that reject unknown keys.

Both share the optimisation names (`epochs`, `batch_size`, `lr`, `seed`, ...). Defaults of pretraining are the
paper's (docs/method.md, "Budgeted pretraining"); finetuning defaults are its protocol and each preset
(atomsift/train/presets/*.yaml) sets the task's own values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from atomsift.data.spec import DatasetSpec
from atomsift.graph.settings import GraphSettings
from atomsift.settings import Seed

Precision = Literal["auto", "32", "64", "bf16-mixed", "16-mixed"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphSpec(Strict):
    """A dataset's neighbour graph: cutoff (A), nearest neighbours kept per atom, periodic or not."""

    cutoff: float = Field(gt=0)
    max_neighbors: int = Field(ge=1)
    pbc: bool

    def settings(self) -> GraphSettings:
        return GraphSettings(self.cutoff, self.max_neighbors, self.pbc)


class BackboneSpec(Strict):
    """A new backbone (`name`, `preset`, `hparams`) or one read from a checkpoint (`checkpoint`)."""

    name: str | None = None
    preset: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    trust_checkpoint: bool = Field(False, description="allow pickled objects in the checkpoint (trusted files)")
    allow_partial: bool = Field(False, description="load a checkpoint whose backbone keys do not all match")

    def check_source(self) -> None:
        """The checkpoint file exists, or the name / preset / hparams build a backbone: before a run folder is made."""
        from atomsift.models.checkpoint import check_checkpoint_path
        from atomsift.models.registry import backbone_settings

        if self.checkpoint is not None:
            check_checkpoint_path(self.checkpoint)
        elif self.name is not None:
            backbone_settings(self.name, self.preset, self.hparams)

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.name is None) == (self.checkpoint is None):
            raise ValueError("give either backbone.name (with preset / hparams) or backbone.checkpoint")
        if self.checkpoint is not None and (self.preset or self.hparams):
            raise ValueError("backbone.preset and backbone.hparams apply to a new backbone, not to a checkpoint")
        return self


class HeadSettings(Strict):
    """Width and depth of the heads training creates (the paper: 5-layer MLPs)."""

    num_layers: int = Field(5, ge=1)
    hidden: int | None = Field(None, ge=1, description="default: the backbone's width")


class UpstreamSpec(DatasetSpec):
    """A pretraining dataset: a dataset spec plus its graph, loss weights and validation share."""

    graph: GraphSpec | None = Field(None, description="default: the paper's settings for the dataset's format")
    energy_weight: float = Field(1.0, ge=0)
    force_weight: float | None = Field(None, ge=0, description="default 10 where the data has forces, else 0")
    val_size: int | None = Field(None, ge=0, description="held-out structures (default min(2000, 5 %))")

    @model_validator(mode="after")
    def _no_own_count(self) -> UpstreamSpec:
        if self.n_samples is not None:
            raise ValueError("an upstream dataset takes no n_samples: the run's n_samples and mixture decide N_i")
        return self


class Optimisation(Strict):
    """Optimiser, schedule, regularisation and run mechanics shared by pretraining and finetuning."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(20, ge=1, description="structures per step and device")
    lr: float = Field(1e-5, gt=0, description="peak learning rate (the paper's released script: 1e-5)")
    warmup_steps: int = Field(2000, ge=0)
    warmup_start_factor: float = Field(0.2, gt=0, le=1)
    min_lr_factor: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    cosine_epochs: float | None = Field(None, gt=0, description="cosine length (default: the whole run)")
    plateau_factor: float | None = Field(None, gt=0, lt=1, description="after the cosine: reduce-on-plateau")
    plateau_patience: int = Field(3, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_clip_algorithm: Literal["norm", "value"] = "norm"
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    checkpoint_every: int = Field(1000, ge=1, description="optimizer steps between resumable checkpoints")
    log_every: int = Field(50, ge=1, description="optimizer steps between logged training losses (metrics.csv)")
    val_every: int = Field(1, ge=1, description="epochs between validations")
    precision: Precision = Field("auto", description="auto: 16-mixed on CUDA (the paper), 32 on CPU")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    seed: Seed = 0
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    num_workers: int = Field(0, ge=0, description="data-loader worker processes per device")
    normalizer_samples: int = Field(10_000, ge=1, description="training structures used to fit normalisers")
    scale_factor_batches: int = Field(16, ge=1, description="GemNet-OC: batches that fit unfitted scale factors")
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["csv"])


class PretrainConfig(Optimisation):
    """`atomsift pretrain`: N structures x E epochs from one dataset or a mixture, one head set per dataset."""

    backbone: BackboneSpec
    heads: HeadSettings = Field(default_factory=HeadSettings)
    upstream: dict[str, UpstreamSpec]
    mixture: Literal["single", "balanced", "temperature", "weights"] = "single"
    temperature: float = Field(2.0, gt=0)
    weights: dict[str, float] | None = Field(
        None, description="mixture 'weights': each dataset's share of the N structures (e.g. from atomsift select)"
    )
    nominal_sizes: dict[str, float] | None = Field(None, description="sizes for temperature shares (default: real)")
    n_samples: int = Field(ge=1, description="N: structures drawn once, over all datasets")
    allow_repeats: bool = Field(False, description="allow N above a dataset's size (structures then repeat)")
    edge_dropout: float = Field(0.1, ge=0, lt=1, description="GemNet-OC: main-graph pairs dropped in training")
    forces: Literal["direct", "gradient"] = "direct"

    @model_validator(mode="after")
    def _mixture(self) -> PretrainConfig:
        if not self.upstream:
            raise ValueError("upstream needs at least one dataset")
        if self.mixture == "single" and len(self.upstream) > 1:
            raise ValueError("mixture 'single' takes one upstream dataset; use balanced or temperature for several")
        if self.nominal_sizes is not None:
            missing = sorted(set(self.upstream) - set(self.nominal_sizes))
            if missing:
                raise ValueError(f"nominal_sizes lacks {', '.join(missing)}")
        check_weights(self.mixture, self.weights, list(self.upstream))
        return self


def check_weights(mixture: str, weights: dict[str, float] | None, names: list[str]) -> None:
    """`weights` is given exactly for mixture 'weights': one non-negative share per dataset, not all 0."""
    if mixture != "weights":
        if weights is not None:
            raise ValueError(f"weights apply to mixture 'weights' only (this mixture is '{mixture}')")
        return
    if weights is None:
        raise ValueError("mixture 'weights' needs weights: {NAME: share, ...} for every dataset")
    missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
    if missing or extra:
        raise ValueError(
            "weights must name exactly the mixed datasets"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not mixed: {', '.join(extra)}" if extra else "")
        )
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {weights}")


Count = int | float | Literal["rest"] | None


class SplitSpec(Strict):
    """Train / val / test: counts (int), fractions of the dataset (0 < float < 1), 'rest', or a saved index
    file (JSON with train, val, test lists, as RUN/split.json)."""

    train: Count = None
    val: Count = None
    test: Count = "rest"
    seed: Seed = 42
    file: str | None = None

    @model_validator(mode="after")
    def _one_rest(self) -> SplitSpec:
        if self.file is None:
            if [self.train, self.val, self.test].count("rest") > 1:
                raise ValueError("at most one of train, val, test can be 'rest'")
            if self.train is None or self.val is None:
                raise ValueError("split needs train and val counts (or a file)")
        return self


class TaskSpec(Strict):
    """What the finetuned head predicts and how it is trained."""

    target: str = Field("energy", description="energy (with forces) or the name of a target in the data")
    head: Literal["energy", "property"] = "energy"
    forces: Literal["direct", "gradient"] | None = "gradient"
    readout: Literal["sum", "mean", "max"] = "sum"
    energy_weight: float = Field(1.0, ge=0)
    force_weight: float = Field(0.0, ge=0)
    linear_reference: bool = Field(True, description="subtract a least-squares per-element reference")
    unit: str = Field("eV", description="unit of the target in the data (eV is reported in meV)")
    metric: Literal["forces_mae", "target_mae", "loss"] = "loss"

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.head == "property" and self.forces is not None:
            raise ValueError("a property head has no forces: set forces: null")
        if self.head == "energy" and self.readout != "sum":
            raise ValueError(
                "an energy head sums its per-atom energies (readout: sum; its per-element reference assumes it); "
                "for an intensive target use head: property with readout: mean or max"
            )
        if self.head == "energy" and not self.linear_reference:
            raise ValueError("energy heads always subtract a linear reference; use head: property to z-score")
        if self.metric == "forces_mae" and self.forces is None:
            raise ValueError("metric forces_mae needs a head with forces")
        if self.force_weight > 0 and self.forces is None:
            raise ValueError("force_weight > 0 needs forces: gradient or direct")
        return self


class LayerwiseLR(Strict):
    """Learning-rate scales by depth: embedding, then one per block (interpolated for other depths)."""

    embedding: float = Field(0.30, gt=0)
    blocks: list[float] = Field(default_factory=lambda: [0.35, 0.40, 0.55, 0.625])
    heads: float = Field(1.0, gt=0)


class FinetuneConfig(Optimisation):
    """`atomsift finetune`: a downstream task from a checkpoint (or from scratch), the paper's protocol."""

    checkpoint: str | None = Field(None, description="weights to start from (from_scratch: its architecture only)")
    from_scratch: bool = False
    backbone: BackboneSpec | None = Field(None, description="the architecture of a from-scratch baseline")
    trust_checkpoint: bool = False
    allow_partial: bool = False
    data: DatasetSpec = Field(description="the downstream dataset (on the command line: --data)")
    split: SplitSpec
    test_options: dict[str, Any] | None = Field(
        None, description="reader options that turn `data` into the test set (e.g. MatBench fold_part: test)"
    )
    task: TaskSpec = Field(default_factory=TaskSpec)
    graph: GraphSpec | None = None
    heads: HeadSettings = Field(default_factory=HeadSettings)
    layerwise_lr: LayerwiseLR | None = Field(default_factory=LayerwiseLR)
    preset: str | None = Field(None, description="the preset these settings started from (recorded)")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(8e-5, gt=0)
    warmup_steps: int = 0
    grad_clip_algorithm: Literal["norm", "value"] = "value"
    cosine_epochs: float | None = 32
    plateau_factor: float | None = 0.8

    @model_validator(mode="after")
    def _source(self) -> FinetuneConfig:
        if self.data.n_samples is not None or self.data.sampling is not None:
            raise ValueError("data takes no n_samples or sampling: the split decides which structures train")
        if not self.from_scratch and self.checkpoint is None:
            raise ValueError(
                "no weights to start from: give --checkpoint FILE (checkpoint: FILE in a config), or --from-scratch "
                "(from_scratch: true, with backbone: {name, preset} or a checkpoint for the architecture)"
            )
        if not self.from_scratch and self.backbone is not None:
            raise ValueError("backbone is for from_scratch runs; a checkpoint brings its own architecture")
        if self.from_scratch and self.checkpoint is None and self.backbone is None:
            raise ValueError("from_scratch needs the architecture: backbone: {name, preset} or checkpoint: PATH")
        return self
