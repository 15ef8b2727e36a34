"""The config's typed dataclass sections, and how to read the type of one key.

One dataclass per stage of the data flow (crop, data, augment, model, loss, train, eval),
held together by :class:`Config`. Derived values (``data.p`` from the batch size and ``k``)
are properties, never written back. What each key allows lives in
:mod:`tripletface.config.schema`; the comment of a key with choices names the list it is one of.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

__all__ = ["CropConfig", "DataConfig", "AugmentConfig", "ModelConfig", "LossConfig", "TrainConfig", "EvalConfig",
           "Config", "section_classes", "field_type", "is_str_tuple"]


@dataclass
class CropConfig:
    """Face detection and alignment (``tripletface crop``)."""

    detector: str = "mtcnn"  # choice_lists.DETECTOR_NAMES
    size: int = 112  # side of the aligned square crop
    template: str = "arcface"  # choice_lists.TEMPLATE_NAMES (arcface: 5-point alignment; box: none, the box squared)
    min_face_size: int = 20  # pixels, in the original image
    detect_scale: float = 0.5  # images are shrunk by this before detection (faster)
    min_score: float = 0.9
    detect_batch: int = 32  # images per detector call
    workers: int = 0  # 0 = number of CPU cores
    test_fraction: float = 0.0  # identity-disjoint test split; 0 = no split
    min_images_test: int = 2  # identities eligible for the test split need this many
    max_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    image_format: str = "png"  # choice_lists.IMAGE_FORMATS
    png_compression: int = 1  # zlib level of PNG crops, 0-9; same pixels at any level (1: 2x faster than 3, +12% size)
    seed: int = 0


@dataclass
class DataConfig:
    """Where training data comes from and how batches are sampled."""

    train_dir: str = "cropped_data/train"
    test_triplets: str = "cropped_data/test_triplets.csv"  # scored after training when it exists; '' = skip
    source: str = "folder"  # choice_lists.DATA_SOURCES
    sampling: str = "pk"  # choice_lists.SAMPLINGS
    triplets_file: str = ""
    batch_size: int = 256  # for pk: P*K images; for triplets: triplets per batch
    k: int = 4  # images per identity in a P×K batch
    val_fraction: float = 0.1  # identities held out for validation
    val_pairs: int = 600  # validation pairs (half matched)
    cache: bool = True
    seed: int = 1234
    synthetic_identities: int = 64
    singletons: float = 0.0  # share of P×K identities drawn from one-image identities (augmented views)
    exclude_identities: str = ""  # file of identity names (one a line) never used in training
    # quality filter on crop's manifest.jsonl (0 = off): drop crops blurrier / more turned than this
    min_blur: float = 0.0  # variance of the crop's Laplacian (lfw-dev 112 crops: median 175, 1 % < 43)
    max_pose: float = 0.0  # |nose offset| in eye distances (lfw-dev: median 0.09, 5 % > 0.29)
    # the face's size in the original photo, pixels (lfw-dev: 1 % < 109; celeba-dev: median 63, 57 % < 80)
    min_face_size: float = 0.0
    # several crop folders trained on at once (when given, instead of train_dir): each is a source,
    # its identities namespaced by the folder's name (dataset.index_folders)
    train_dirs: typing.Tuple[str, ...] = ()
    source_weights: tuple = ()  # P×K sampling weight per source; () = as data.source_balance says
    # without source_weights: "identities" weighs each source by its identities with 2+ images (each such
    # identity equally likely, the single-folder behaviour), "sources" gives every source an equal share
    source_balance: str = "identities"  # choice_lists.SOURCE_BALANCES
    source_terms: typing.Tuple[str, ...] = ()  # terms of use per source, stored in the model; () = looked up
    allow_missing_exclusions: bool = False  # names in exclude_identities that match no identity are an error

    @property
    def p(self) -> int:
        return max(1, self.batch_size // self.k)

    @property
    def dirs(self) -> tuple[str, ...]:
        """The training folders: ``train_dirs`` when given, else ``(train_dir,)``."""
        return tuple(self.train_dirs) or (self.train_dir,)


@dataclass
class AugmentConfig:
    """Train-branch augmentations, applied in this order. 0 or False disables one."""

    flip: bool = True
    rotation: float = 10.0  # max degrees, ±
    brightness: float = 0.2  # max delta on [0, 1] pixels
    contrast: float = 0.0  # max relative change, e.g. 0.3 -> [0.7, 1.3]
    color_jitter: float = 0.0  # saturation/hue strength; no-op on greyscale
    gaussian_blur: float = 0.0  # probability
    motion_blur: float = 0.0  # probability
    cutout: float = 0.0  # probability
    cutout_size: float = 0.3  # fraction of the side
    greyscale: float = 0.0  # probability of turning an image grey (colour and greyscale sources mixed)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # choice_lists.BACKBONES
    embedding_dim: int = 128
    image_size: tuple = (224, 224)
    weights: typing.Optional[str] = None  # "imagenet" | None | path to a weights file
    dropout: float = 0.0
    width: float = 1.0  # width multiplier (mobilenet alpha, small_cnn channels)
    greyscale: bool = False  # the model turns every input grey (in training and inference alike)


@dataclass
class LossConfig:
    name: str = "semi_hard"  # choice_lists.LOSS_NAMES
    margin: float = 0.2
    # the mining schedule: from this fraction of the training steps on, mine batch_hard (semi-hard,
    # then harder); 0 = one miner throughout
    hard_from: float = 0.0
    contrastive_margin: float = 0.5  # loss.name contrastive (XBM): the similarity above which negatives push
    distance: str = "squared_l2"  # choice_lists.DISTANCE_NAMES
    soft_margin: bool = False
    memory_bank_size: int = 0  # 0 = no cross-batch memory
    memory_bank_start_step: int = 0  # warm-up: the bank is neither filled nor used before this step
    collapse_threshold: float = 1e-3  # mean distance under this is reported as collapse
    # auxiliary margin-softmax (CosFace) head over the training identities, beside the triplet loss
    aux_weight: float = 0.0  # its weight in the total loss; 0 = off
    aux_margin: float = 0.35  # additive cosine margin
    aux_scale: float = 30.0  # logit scale


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 50
    # minutes of wall time for the whole `train` (set-up, steps, validation, the final save): when > 0,
    # train.epochs is replaced by the epochs that fit, measured at the start (tripletface.training.budget)
    time_budget: float = 0.0
    validation_steps: int = 10
    learning_rate: float = 1e-4
    optimizer: str = "adam"  # choice_lists.OPTIMIZERS
    lr_schedule: str = "constant"  # choice_lists.LR_SCHEDULES
    warmup_epochs: int = 0
    weight_decay: float = 1e-4  # AdamW only (train.optimizer=adamw); 0 = no decay
    mixed_precision: str = "float32"  # choice_lists.PRECISIONS (auto: what the hardware does well)
    checkpoint_dir: str = "checkpoints"
    tensorboard_logdir: str = "logs"
    seed: int = 42
    distribute: str = "none"  # training.distribute.STRATEGIES (TF_CONFIG for multiworker)
    # BatchNorm's training pass as TensorFlow's fused kernel (tripletface.training.trainer.fuse_batch_norm): the
    # same numbers up to float rounding; 1.17-1.28x the small_cnn step on CPU (docs/PERFORMANCE.md)
    fused_batch_norm: bool = True
    # XLA for the training step (compile(jit_compile=True)); off: on CPU it measured 0.78x with
    # oneDNN and below fused BatchNorm without (docs/PERFORMANCE.md, "Training step levers")
    jit_compile: bool = False


@dataclass
class EvalConfig:
    folds: int = 10  # evaluate: k for k-fold accuracy when the pairs file defines no folds
    flip_tta: bool = True  # stored in the trained model: inference averages each face with its mirror
    batch_size: int = 64  # images per forward pass (training's validation, evaluate)
    far_targets: tuple = (1e-3, 1e-2)  # evaluate: TAR is reported at these false accept rates


@dataclass
class Config:
    crop: CropConfig = field(default_factory=CropConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def section_classes() -> dict[str, type]:
    """``{"crop": CropConfig, ...}``: each section of :class:`Config` and its dataclass."""
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Config)}


def field_type(section_cls: type, name: str):
    """The type of field ``name`` of a section dataclass (``typing.Optional[str]``, ``tuple``, ...)."""
    hints = typing.get_type_hints(section_cls)
    return hints[name]


def is_str_tuple(typ) -> bool:
    """``typing.Tuple[str, ...]``: a list of strings (paths, names)."""
    return typing.get_origin(typ) is tuple and typing.get_args(typ)[:1] == (str,)
