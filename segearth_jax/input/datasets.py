"""TFDS datasets (array_record) for LaSeRS, RRSIS-D, RefSegRS, RISBench, EarthReason and the
synthetic LaSeRS-layout set: the record features (`features()`, the contract with the input
pipeline), one builder per dataset (`BUILDERS`), `build()` and `load()`. Each builder reads the
released folder (`manual_dir`) with `readers`, validates every example (`records`) and writes the
features. The command line is `python -m data.builders` (data/README.md).

Bad input (see records.py): on_error="raise" (default) stops at the first BadInput; "skip" leaves
the record out, counts it by reason and prints the summary after each split (also stored in the
dataset's metadata.json). The policy is the builder argument `on_error`, else the environment
variable SEGEARTH_ON_ERROR, else "raise".
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from segearth_jax import errors
from segearth_jax.input import readers
from segearth_jax.input.records import (
    POLICIES,
    BadInput,
    Record,
    SkipReport,
    check_example,
    load_image,
)

log = logging.getLogger(__name__)

ON_ERROR_ENV = "SEGEARTH_ON_ERROR"
FILE_FORMAT = "array_record"


def features() -> tfds.features.FeaturesDict:
    """The on-disk contract with the input pipeline. No tfds.features.Image: it needs TF."""
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "subset": tfds.features.Text(),
        "image_name": tfds.features.Text(),
        "instruction": tfds.features.Text(),
        "answer": tfds.features.Text(),
        # PNG bytes of the RGB uint8 image (lossless; decode with cv2.imdecode -> BGR).
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        # [N, H, W] 0/1 in [SEG] order; [0, H, W] when the split has no masks or no target.
        "masks": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "has_masks": np.bool_,
        "height": np.int32,
        "width": np.int32,
    })


def make_example(record: Record, *, allow_no_target: bool = False,
                 allow_empty_mask: bool = False) -> dict[str, Any]:
    """Loads and validates one record (BadInput if anything is wrong) -> a FEATURES dict."""
    image = load_image(record.image_path, record.id)
    masks = None if record.masks is None else record.masks()
    check_example(record, image, masks, allow_no_target=allow_no_target,
                  allow_empty_mask=allow_empty_mask)
    h, w = image.shape[:2]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))  # RGB -> BGR
    if not ok:
        raise BadInput(record.image_path, record.id, "OpenCV could not PNG-encode the image",
                       "unreadable_image")
    return {
        "id": record.id,
        "subset": record.subset,
        "image_name": os.path.basename(record.image_path),
        "instruction": record.instruction,
        "answer": record.answer,
        "image": png.tobytes(),
        "masks": np.zeros((0, h, w), np.uint8) if masks is None else masks,
        "has_masks": masks is not None,
        "height": h,
        "width": w,
    }


def generate_examples(reader: str, root: str | os.PathLike, split: str, report: SkipReport, *,
                      allow_no_target: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key = record id, example) for every valid record of `readers.READERS[reader]`; invalid
    ones go through `report` (raise or count). A record with an empty GT mask is kept in an
    evaluation split (the metrics score it) and skipped, counted, in the training split
    whatever the policy (released sets such as RRSIS-D have some)."""
    seen: set[str] = set()
    for record in readers.READERS[reader](root, split, report):
        if record.id in seen:
            report.handle(BadInput(record.source, record.id, "id occurs twice in this split",
                                   "duplicate_id"))
            continue
        seen.add(record.id)
        try:
            example = report.run(make_example, record, allow_no_target=allow_no_target,
                                 allow_empty_mask=split != "train")
        except BadInput as e:
            if e.kind != "empty_mask":
                raise
            report.skip(e)
            continue
        if example is not None:
            report.kept += 1
            yield record.id, example


def _policy(on_error: str | None) -> str:
    policy = on_error or os.environ.get(ON_ERROR_ENV) or "raise"
    if policy not in POLICIES:
        raise ValueError(f"on_error (or ${ON_ERROR_ENV}) must be one of {POLICIES}, got "
                         f"{policy!r}")
    return policy


class _SegEarthBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by all datasets: one reader, a list of released splits, the skip policy."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    READER: ClassVar[str]
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    ALLOW_NO_TARGET: ClassVar[bool] = False
    HOMEPAGE: ClassVar[str] = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS' default needs the `importlib_resources` backport for modules inside a package.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, on_error: str | None = None, **kwargs: Any):
        self.on_error = _policy(on_error)
        kwargs.setdefault("file_format", FILE_FORMAT)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=(self.__doc__ or "").strip(), features=features(),
            homepage=self.HOMEPAGE or None, metadata=tfds.core.MetadataDict())

    def _has_split(self, root: Path, split: str) -> bool:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        splits = [s for s in self.SPLITS if self._has_split(root, s)]
        if not splits:
            flag = getattr(self, "manual_dir_flag", "--manual_dir")
            how = " ".join(self.MANUAL_DOWNLOAD_INSTRUCTIONS.replace("--manual_dir", flag).split())
            raise BadInput(root, None, f"no {self.name} split found in this folder. {how}",
                           "missing_file")
        return {s: self._generate_examples(root=str(root), split=s) for s in splits}

    def _generate_examples(self, root: str, split: str):
        report = SkipReport(self.on_error, name=f"{self.name}/{split}")
        yield from generate_examples(self.READER, root, split, report,
                                     allow_no_target=self.ALLOW_NO_TARGET)
        summary = report.summary()
        print(summary, flush=True)
        (log.warning if report.skipped or report.whole_files else log.info)("%s", summary)
        self.info.metadata[f"skip_report_{split}"] = report.as_dict()
        if report.kept == 0:
            raise ValueError(f"{self.name}/{split}: no valid example in {root}\n{summary}")


class Lasers(_SegEarthBuilder):
    """LaSeRS (SegEarth-R2): reasoning segmentation; test subsets are in the `subset` field."""

    READER = "lasers"
    SPLITS = ("train", "test")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at the LaSeRS folder holding
    train/images/*, train/annotations/*.json, test/images/*, test/annotations/*.json
    (the contest release, https://www.codabench.org/competitions/12624/)."""

    def _has_split(self, root: Path, split: str) -> bool:
        return (root / split / "annotations").is_dir()


class Synthetic(Lasers):
    """Synthetic data in the LaSeRS layout (for demos and tests)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at a folder in the LaSeRS layout:
    train/images/*, train/annotations/*.json, test/images/*, test/annotations/*.json."""


class Rrsisd(_SegEarthBuilder):
    """RRSIS-D: referring segmentation, one example per (ref, sentence)."""

    READER = "rrsisd"
    HOMEPAGE = "https://github.com/Lsan2401/RMSIN"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at the RRSIS-D folder holding
    rrsisd/refs(unc).p, rrsisd/instances.json and images/rrsisd/JPEGImages/*.jpg."""

    def _has_split(self, root: Path, split: str) -> bool:
        return (root / "rrsisd" / "refs(unc).p").exists()


class Refsegrs(_SegEarthBuilder):
    """RefSegRS: referring segmentation, one example per phrase line."""

    READER = "refsegrs"
    HOMEPAGE = "https://huggingface.co/datasets/JessicaYuan/RefSegRS"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at the RefSegRS folder holding
    images/<id>.tif, masks/<id>.tif and output_phrase_{train,val,test}.txt."""

    def _has_split(self, root: Path, split: str) -> bool:
        return (root / f"output_phrase_{split}.txt").exists()


class Risbench(Refsegrs):
    """RISBench: referring segmentation, one example per phrase line."""

    READER = "risbench"
    HOMEPAGE = "https://github.com/HIT-SIRS/CroBIM"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at the RISBench folder holding
    img_rgb/<name>.png, mask/<name>.png and output_phrase_{train,val,test}.txt."""


class Earthreason(_SegEarthBuilder):
    """EarthReason (SegEarth-R1): reasoning segmentation, one example per question; samples
    with an empty answer list have no target (0 [SEG], masks [0, H, W])."""

    READER = "earthreason"
    ALLOW_NO_TARGET = True
    HOMEPAGE = "https://github.com/earth-insights/SegEarth-R1"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Point --manual_dir at the EarthReason folder (RSReasonSeg)
    holding {train,val,test}/images/*, {split}/labels/*.png and {split}/QAs/*.json."""

    def _has_split(self, root: Path, split: str) -> bool:
        return (root / split).is_dir()


BUILDERS: dict[str, type[_SegEarthBuilder]] = {
    "lasers": Lasers, "rrsisd": Rrsisd, "refsegrs": Refsegrs, "risbench": Risbench,
    "earthreason": Earthreason, "synthetic": Synthetic,
}


def _builder_cls(name: str) -> type[_SegEarthBuilder]:
    if name not in BUILDERS:
        raise errors.BadValue(f"unknown dataset {name!r}; one of {sorted(BUILDERS)}")
    return BUILDERS[name]


def build(name: str, manual_dir: str | os.PathLike | None, data_dir: str | os.PathLike,
          on_error: str | None = "raise", *, overwrite: bool = False,
          flag: str = "--manual_dir") -> _SegEarthBuilder:
    """Builds (or, if already built and not `overwrite`, reuses) dataset `name` from the
    released folder `manual_dir` into `data_dir/<name>/<version>/`; returns the builder.
    on_error: "raise" | "skip" | None (None: $SEGEARTH_ON_ERROR, else "raise").
    manual_dir may be None when the dataset is already built. flag: how the user passes
    manual_dir (named in the `errors.MissingFile` raised when it is needed and absent)."""
    cls = _builder_cls(name)
    how = " ".join(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.replace("--manual_dir", flag).split())
    # Checked before the builder exists: TFDS logs a warning for a version folder it lacks.
    built = (epath.Path(data_dir) / name / str(cls.VERSION) / "dataset_info.json").exists()
    if manual_dir is None and (overwrite or not built):
        raise errors.MissingFile(f"{name} is not built in {os.fspath(data_dir)!r}: {how}")
    if (overwrite or not built) and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
        raise errors.MissingFile(f"{flag} {manual_dir}: no such folder, or empty. {how}")
    builder = cls(data_dir=os.fspath(data_dir), on_error=on_error)
    builder.manual_dir_flag = flag
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir), download_mode=mode))
    return builder


def load(name: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """{split: random-access data source} of a built dataset (no TensorFlow needed)."""
    return _builder_cls(name)(data_dir=os.fspath(data_dir)).as_data_source()
