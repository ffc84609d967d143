"""Is a prior within what the checkpoint was trained on? A score from the model itself, calibrated per checkpoint.

The components are what the model does with the prior before anything is generated, or what the calibration
priors looked like, so they need no second model and run on either engine:

* ``reconstruction_rms``: the RMS difference between the prior and the VQ tokenizer's reconstruction of it, at
  the model's image size. The tokenizer was fit to the training images; what it cannot represent (other anatomy,
  overlays, inverted polarity, a photograph) comes back wrong.
* ``code_nll``: the language model's mean negative log-likelihood of the prior's visual codes, teacher-forced
  after BOS and the image header exactly as a prior appears in training, in units of ln(codebook size) (1.0: no
  better than chance, so checkpoints of any codebook compare). It is normalised over the visual vocabulary: the
  distribution the sampler draws image tokens from, and all that the ONNX ``head_visual`` graph computes.
* ``layout_distance`` and ``layout_residual``: where the prior's mass lies, as a 16x16 grid of block means, against
  the principal components of the calibration priors' grids (the Mahalanobis distance within the first
  ``LAYOUT_RANK`` of them, and the distance off them). Both components above judge the image patch by patch, and a
  lateral chest film, a hand or a knee are made of patches a chest model has seen; what they lack is a frontal
  chest's arrangement of lungs, mediastinum and diaphragm, which this pair measures (docs/model.md has the figures).

The calibration (``ood`` in ``progemu.json``, written by :func:`calibrate`) keeps robust statistics of each
component over the checkpoint's intended inputs, and the limit that a chosen share of such inputs pass.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.checkpoint import SPEC_NAME, checkpoint_identity, read_json, write_manifest
from inference.engines.base import Engine
from inference.errors import CheckpointError
from inference.loading import EngineOptions, load_pipeline, onnx_export_for
from inference.sequence import PromptBuilder
from inference.vision_tokenizer import ImageCodec

log = logging.getLogger(__name__)

METHOD = "progemu-ood/3"
"""Names the score's definition: a calibration made for another definition is refused, not misread."""
COMPONENTS = ("reconstruction_rms", "code_nll", "layout_distance", "layout_residual")
TWO_SIDED = frozenset({"code_nll"})
"""Components whose too-typical values count as foreign too (see ``Calibration.score``)."""
MIN_IMAGES = 20
"""Fewer leave the median and MAD, and so every limit, at the mercy of single images."""
_NORMAL_MAD = 1.4826
"""MAD times this estimates the standard deviation of a normal sample."""


LAYOUT_GRID = 16
"""The prior's layout: the means of this many by this many blocks."""
LAYOUT_RANK = 16
"""Principal components of the calibration layouts kept: enough for a frontal chest's variety (the heart's size,
the inspiration, the film's framing), few enough that other anatomy lies off them."""


def layout_features(prior: np.ndarray) -> np.ndarray:
    """The block means of a square prior (side a multiple of ``LAYOUT_GRID``), as one vector."""
    side = prior.shape[0]
    if prior.shape != (side, side) or side % LAYOUT_GRID:
        raise ValueError(f"the layout needs a square prior whose side is a multiple of {LAYOUT_GRID}")
    block = side // LAYOUT_GRID
    return prior.reshape(LAYOUT_GRID, block, LAYOUT_GRID, block).mean(axis=(1, 3)).ravel().astype(np.float64)


@dataclass(frozen=True)
class Layout:
    """The principal components of the calibration priors' layouts."""

    mean: np.ndarray
    basis: np.ndarray
    """[rank, features], orthonormal rows."""
    variance: np.ndarray
    """Of the calibration layouts along each row of ``basis``."""

    @classmethod
    def fit(cls, features: np.ndarray, rank: int = LAYOUT_RANK) -> Layout:
        if len(features) <= rank:
            raise ValueError(f"a layout of rank {rank} needs more than {rank} priors, got {len(features)}")
        mean = features.mean(axis=0)
        _, singular, rows = np.linalg.svd(features - mean, full_matrices=False)
        return cls(mean, rows[:rank], np.maximum(singular[:rank] ** 2 / (len(features) - 1), 1e-12))

    def components(self, prior: np.ndarray) -> dict[str, float]:
        centred = layout_features(prior) - self.mean
        along = self.basis @ centred
        return {"layout_distance": float(np.sqrt(np.sum(along**2 / self.variance))),
                "layout_residual": float(np.linalg.norm(centred - along @ self.basis))}

    def to_dict(self) -> dict:
        return {"grid": LAYOUT_GRID, "mean": _rounded(self.mean), "basis": [_rounded(row) for row in self.basis],
                "variance": _rounded(self.variance)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Layout:
        if data.get("grid") != LAYOUT_GRID:
            raise ValueError(f"a layout on a {data.get('grid')} grid, not {LAYOUT_GRID}")
        mean, basis, variance = (np.asarray(data[key], dtype=np.float64) for key in ("mean", "basis", "variance"))
        if basis.ndim != 2 or basis.shape[1] != mean.shape[0] != LAYOUT_GRID**2 or variance.shape != (len(basis),):
            raise ValueError("the layout's arrays do not fit together")
        return cls(mean, basis, variance)


def _rounded(values: np.ndarray) -> list[float]:
    """Seven significant digits: what the score needs, a third of the JSON."""
    return [float(f"{value:.7g}") for value in values]


def prior_components(vision: ImageCodec, prompts: PromptBuilder, engine: Engine, prior: np.ndarray,
                     layout: Layout | None = None) -> dict[str, float]:
    """The raw components for one prior: float32 [S, S] in [0, 1] at the model's image size (the layout ones
    only with the calibration's ``layout``)."""
    codes = vision.encode(prior[None])[0]
    reconstruction = vision.decode(codes[None])[0]
    lay = prompts.layout
    height, width = codes.shape
    log_probs = engine.span_log_probs([lay.bos, *prompts.image_header(height, width)], prompts.image_body(codes),
                                      (lay.visual_offset, lay.visual_offset + lay.codebook_size))
    components = {"reconstruction_rms": float(np.sqrt(np.mean((reconstruction - prior) ** 2))),
                  "code_nll": float(-log_probs.mean() / math.log(lay.codebook_size))}
    return components | (layout.components(prior) if layout is not None else {})


@dataclass(frozen=True)
class Reference:
    """One component's typical value over the calibration priors, and its spread."""

    median: float
    scale: float

    def excess(self, value: float, *, two_sided: bool) -> float:
        deviation = (value - self.median) / self.scale
        return abs(deviation) if two_sided else max(0.0, deviation)


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` stores in ``progemu.json``: per-component references and the limit on the score."""

    references: Mapping[str, Reference]
    limit: float
    quantile: float
    images: int
    layout: Layout

    def score(self, components: Mapping[str, float]) -> float:
        """The largest robust z-score over the components.

        Median and MAD keep a few odd calibration images from moving the reference, and the maximum flags a
        prior that either the tokenizer or the language model finds atypical: they fail on different inputs.
        The likelihood is judged two-sided, because likelihood models can find simple images (a blank frame) more
        likely than their own training data (Nalisnick et al., 2019): too likely is foreign too. The reconstruction
        error is judged one-sided: a prior the tokenizer reproduces better than usual is a cleaner image (less
        noise, a film downsampled from a higher resolution), and the likelihood still catches a blank frame.
        """
        return max(self.references[name].excess(components[name], two_sided=name in TWO_SIDED)
                   for name in COMPONENTS)

    @classmethod
    def fit(cls, samples: list[dict[str, float]], quantile: float, layout: Layout) -> Calibration:
        """References from the samples, and the limit that ``quantile`` of them pass (``layout`` fitted on other
        priors than the samples, or the samples' layout components would be too small)."""
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"the quantile must be in [0.5, 1), not {quantile}")
        count = len(samples)
        # the conformal rank: a new prior like these scores at most the rank-th smallest score with probability
        # >= quantile, which the plain in-sample quantile promises only for the calibration images themselves
        rank = math.ceil((count + 1) * quantile)
        if count < MIN_IMAGES or rank > count:
            needed = max(MIN_IMAGES, math.ceil(quantile / (1.0 - quantile) - 1e-9))
            raise ValueError(f"a limit that {quantile:g} of priors pass needs at least {needed} calibration images, "
                             f"got {count}")
        references = {}
        for name in COMPONENTS:
            values = np.array([sample[name] for sample in samples])
            median = float(np.median(values))
            spread = _NORMAL_MAD * float(np.median(np.abs(values - median)))
            # a floor relative to the median: identical calibration images would give a zero scale
            references[name] = Reference(median, max(spread, 1e-3 * abs(median), 1e-12))
        unlimited = cls(references, math.inf, quantile, count, layout)
        limit = sorted(unlimited.score(sample) for sample in samples)[rank - 1]
        return cls(references, limit, quantile, count, layout)

    def to_dict(self) -> dict:
        return {"method": METHOD, "limit": self.limit, "quantile": self.quantile, "images": self.images,
                "components": {name: {"median": ref.median, "scale": ref.scale}
                               for name, ref in self.references.items()},
                "layout": self.layout.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Calibration:
        """Read ``progemu.json``'s ``ood``, refusing a calibration of another score or a damaged one."""
        if data.get("method") != METHOD:
            raise CheckpointError(f"the checkpoint's out-of-distribution calibration is for {data.get('method')!r}, "
                                  f"not {METHOD}: calibrate it again")
        try:
            references = {name: Reference(float(data["components"][name]["median"]),
                                          float(data["components"][name]["scale"])) for name in COMPONENTS}
            return cls(references, float(data["limit"]), float(data["quantile"]), int(data["images"]),
                       Layout.from_dict(data["layout"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's out-of-distribution calibration is damaged ({exc!r}): "
                                  "calibrate it again") from None


@dataclass(frozen=True)
class PriorAssessment:
    """How far a prior lies from the checkpoint's calibration priors.

    ``score`` is :meth:`Calibration.score`; for an uncalibrated checkpoint, which has no ``limit``, it is the
    ``code_nll`` component alone (1.0: the model predicts the prior's codes no better than chance).
    """

    score: float
    limit: float | None
    components: dict[str, float]
    """The raw components, by name (``COMPONENTS``)."""

    @property
    def within_limit(self) -> bool:
        return self.limit is None or self.score <= self.limit

    def refusal(self, model: str) -> str:
        """The one-line message for a refused prior, ``model`` naming the checkpoint."""
        limit = "none: not calibrated" if self.limit is None else f"{self.limit:.2f}"
        return f"this image is outside what {model} was trained on (score {self.score:.2f}, limit {limit})"


def assess(components: dict[str, float], calibration: Calibration | None) -> PriorAssessment:
    """The assessment of a prior's components under the checkpoint's calibration, if it has one."""
    if calibration is None:
        return PriorAssessment(components["code_nll"], None, components)
    return PriorAssessment(calibration.score(components), calibration.limit, components)


def calibrate(model_path: str | Path, images: Iterable[np.ndarray], *, quantile: float = 0.99, device: str = "cpu",
              progress: Callable[[int], None] | None = None) -> Calibration:
    """Score the checkpoint's intended inputs and store the calibration in it; return the calibration.

    ``images`` are priors as the pipeline takes them: float32 [S, S] in [0, 1], letterboxed to the model's
    image size by the node's own rule. Every other image fits the layout; the rest set the references and the
    limit, so twice ``MIN_IMAGES`` (and twice what the quantile needs) are the least. The PyTorch engine scores
    them: the checkpoint is the reference the ONNX
    export is verified against. ``progress`` is called with the number of images scored so far.
    """
    directory = Path(model_path)
    pipeline = load_pipeline(directory, EngineOptions(engine="torch", device=device))
    samples, layouts = [], []
    for count, image in enumerate(images, start=1):
        # alternate images: one half fits the layout, the other half scores against it (held out, as a new prior)
        prior = pipeline.checked_prior(image)
        if count % 2:
            layouts.append(layout_features(prior))
        else:  # the raw components, whatever calibration the checkpoint holds now (perhaps of an older method)
            samples.append((prior_components(pipeline.model.vision, pipeline.model.prompts, pipeline.engine, prior),
                            prior))
        if progress is not None:
            progress(count)
    layout = Layout.fit(np.stack(layouts)) if len(layouts) > LAYOUT_RANK else None
    if layout is None:
        raise ValueError(f"calibration needs at least {2 * (LAYOUT_RANK + 1)} images, got {len(layouts) * 2}")
    calibration = Calibration.fit([components | layout.components(image) for components, image in samples],
                                  quantile, layout)
    store_calibration(directory, calibration)
    log.info("calibrated %s on %d images: limit %.2f at the %g quantile", directory, len(samples),
             calibration.limit, quantile)
    return calibration


def store_calibration(directory: Path, calibration: Calibration) -> str:
    """Write ``ood`` into ``progemu.json`` and the manifest, re-stamp an export beside it; return the identity."""
    previous = checkpoint_identity(directory)  # refuses a checkpoint changed since: the new manifest must not bless it
    spec_path = directory / SPEC_NAME
    spec = read_json(spec_path) if spec_path.exists() else {}
    spec["ood"] = calibration.to_dict()
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    identity = write_manifest(directory)
    restamp_onnx_export(directory, previous, identity, spec["ood"])
    return identity


def restamp_onnx_export(directory: Path, previous: str, identity: str, ood: dict) -> bool:
    """Point the ONNX export beside the checkpoint at its new identity and give it the calibration.

    Safe: the graphs hold only weights, and calibrating changed nothing but ``progemu.json``'s ``ood``, which the
    export carries in its spec. An export made from another checkpoint (not ``previous``) stays as stale as it was.
    """
    from inference.onnx_bundle import MANIFEST, read_manifest  # onnxruntime, only when an export is there

    export = onnx_export_for(directory)
    if export is None:
        return False
    manifest = read_manifest(export, verify_hashes=False)  # the graphs are not touched, so not hashed again
    if manifest["source_checkpoint_sha256"] != previous:
        log.warning("the ONNX export in %s was made from another checkpoint; left as it is: export again", export)
        return False
    manifest["source_checkpoint_sha256"] = identity
    manifest["spec"]["ood"] = ood
    (export / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return True
