"""The choice lists of config keys whose implementing module is too heavy for the config to import.

``import tripletface.config`` loads neither NumPy nor Keras, so a list whose implementing module
loads them is defined here, once: :data:`tripletface.config.schema.SCHEMA` takes it from here, and
so do the implementing modules that keep it as a plain list (``model.build`` its backbones,
``losses`` its loss names). Where a module keys its implementations by name instead (the
detectors of :mod:`tripletface.faces.detect`, the distances of :mod:`tripletface.losses.distances`,
the miners, the alignment templates), tests/config/test_config_schema.py checks that its names
are exactly these. A cheap implementing module gives its list to the schema directly
(``training.distribute.STRATEGIES``).
"""

__all__ = ["DETECTOR_NAMES", "TEMPLATE_NAMES", "IMAGE_FORMATS", "DATA_SOURCES", "SAMPLINGS", "SOURCE_BALANCES", "BACKBONES",
           "MININGS", "LOSS_NAMES", "DISTANCE_NAMES", "OPTIMIZERS", "LR_SCHEDULES", "PRECISIONS",
           "GALLERY_INDEXES"]

DETECTOR_NAMES = ("mtcnn", "opencv")  # crop.detector: faces.detect.DETECTORS
TEMPLATE_NAMES = ("arcface", "box")  # crop.template: faces.align.TEMPLATES, and BOX (no alignment)
IMAGE_FORMATS = ("png", "jpg")  # crop.image_format
DATA_SOURCES = ("folder", "synthetic")  # data.source
SAMPLINGS = ("pk", "triplets", "triplets_file")  # data.sampling
# data.source_balance: without data.source_weights, each identity with 2+ images equally likely, or
# each source an equal share of the batch (data.index.source_weights)
SOURCE_BALANCES = ("identities", "sources")
BACKBONES = ("resnet50", "efficientnet", "mobilenet", "small_cnn")  # model.backbone: model.build
MININGS = ("batch_all", "batch_hard", "semi_hard")  # the online miners: losses.miners.MINERS
# loss.name values: explicit triplets, an online miner, or XBM's contrastive pair loss (losses.get_loss)
LOSS_NAMES = ("triplet",) + MININGS + ("contrastive",)
DISTANCE_NAMES = ("squared_l2", "l2", "cosine")  # loss.distance: losses.distances.DISTANCES
OPTIMIZERS = ("adam", "adamw", "sgd")  # train.optimizer
LR_SCHEDULES = ("constant", "cosine")  # train.lr_schedule
PRECISIONS = ("float32", "bfloat16", "float16", "auto")  # train.mixed_precision: training.precision.resolve_precision
GALLERY_INDEXES = ("exact", "faiss")  # enroll/identify --index: inference.search
