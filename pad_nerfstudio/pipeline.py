"""The OmniposeAD pipeline: train the anomaly-free field of one object, then inspect pose-free queries.

Training is nerfstudio's: ray batches from the posed defect-free views. Before the first step the
occupancy grid is carved from the training silhouettes so that no sample is wasted on empty space.
After training, `OmniposePipeline.inspect` is the one call per query shared by ns-eval, the viewer and
the benchmark: estimate the pose (pose/), render the anomaly-free reference there (field/), compare the
two in the backbone's feature space (anomaly/). `get_average_eval_image_metrics` runs it over the test
split and returns the PAD metrics, so `ns-eval` reports them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from pad_nerfstudio.anomaly.anomaly_map import AnomalyScorer, AnomalyScorerConfig, image_scores
from pad_nerfstudio.anomaly.rendering_error import RenderingErrorModel, rendering_cues
from pad_nerfstudio.anomaly.report import QueryRecord, summarise_records, write_report
from pad_nerfstudio.data.datamanager import MADDataManagerConfig
from pad_nerfstudio.data.mad_dataset import MADDataset
from pad_nerfstudio.data.mad_layout import read_true_poses, spread_subset
from pad_nerfstudio.data.object_masks import segment_object
from pad_nerfstudio.field.appearance import identity_transform, match_colours
from pad_nerfstudio.field.model import OmniposeModel, OmniposeModelConfig
from pad_nerfstudio.inspection import Inspection
from pad_nerfstudio.pose.refine import PoseEstimator, PoseEstimatorConfig
from pad_nerfstudio.pose.se3 import orbit, rotation_error_deg, translation_error_percent
from pad_nerfstudio.progress import live_or_plain_progress
from pad_nerfstudio.viewer import InspectionPanel


@dataclass
class OmniposePipelineConfig(VanillaPipelineConfig):
    """Pipeline of the `omnipose-ad` method."""

    _target: Type = field(default_factory=lambda: OmniposePipeline)
    datamanager: MADDataManagerConfig = field(default_factory=MADDataManagerConfig)
    model: OmniposeModelConfig = field(default_factory=OmniposeModelConfig)
    localisation: PoseEstimatorConfig = field(default_factory=PoseEstimatorConfig)
    """Pose estimation of queries through the frozen field."""
    scorer: AnomalyScorerConfig = field(default_factory=AnomalyScorerConfig)
    """Query-vs-reference anomaly maps and image scores (its backbone is shared with pose retrieval)."""
    startup_note: Optional[str] = None
    """Printed when the pipeline starts (e.g. that a GPU preset fell back to its CPU settings)."""
    hull_views: int = 64
    """Training views used to carve the visual hull that initialises the occupancy grid."""
    backdrop_band_coarse: float = 0.04
    """Photos on a backdrop (MAD-Real): how far (fraction of the query's longer side) the object's outline may
    lie from the field's silhouette at the first pose estimate, which fits the object against its backdrop."""
    backdrop_band: float = 0.015
    """The same after the pose was refined on the cut-out object; also how far from the silhouette the anomaly
    map is kept (a defect changes the outline by less, and segmentation errors beyond are no defect)."""
    rendering_error_views: int = 16
    """Training views on which the field's own rendering error is measured per image-space cue (silhouette
    distance, depth and colour edges) when the detector is built; the anomaly map is divided by it where it is
    above the object's typical error (`anomaly/rendering_error.py`). 0 disables."""
    rendering_error_pose_deg: float = 0.15
    """The calibration views are rendered this far (rotation about the object centre, random axis) from their
    true pose, like a query's estimate is: pose error shows at the same edges as field error."""
    reference_max_side: int = 256
    """The anomaly-free reference is rendered at the query's size up to this many pixels on its longer side, or
    the scorer's map size if that is larger (then resized to the query's size): scoring compares at the map size
    (224), so larger renderings cost time and add little (measured on 400 px queries: 0.43 s per reference at 256,
    0.68 s at 320)."""


class OmniposePipeline(VanillaPipeline):
    """Radiance field of the defect-free object, and inspection of pose-free queries through it."""

    config: OmniposePipelineConfig
    model: OmniposeModel

    def __init__(
        self,
        config: OmniposePipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[torch.cuda.amp.GradScaler] = None,
    ):
        _fill_missing_fields(config)
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        if config.startup_note and test_mode == "val":
            CONSOLE.print(f"[bold yellow]{config.startup_note}")
        self._detector: Optional[Tuple[PoseEstimator, AnomalyScorer]] = None
        self._on_backdrop = False  # set with the detector: the training views are photos on a backdrop
        self._rendering_error: Optional[RenderingErrorModel] = None  # fitted with the detector
        self.inspection = InspectionPanel(self)  # viewer panel (pad_nerfstudio/viewer), found by nerfstudio's viewer

    # ----------------------------------------------------------------------------------------------- training
    def carve_visual_hull(self, step: int) -> None:
        if bool(self.model.hull_carved):
            return
        dataset = self.datamanager.train_dataset
        # An evenly spread subset of views carves nearly the same hull at a fraction of the cost.
        positions = dataset.cameras.camera_to_worlds[:, :, 3].numpy()
        views = spread_subset(positions - positions.mean(0), self.config.hull_views).tolist()
        images = [dataset.get_image_float32(i) for i in views]
        self.model.carve_visual_hull(dataset.cameras[torch.tensor(views)], images)
        CONSOLE.log(
            f"Occupancy grid carved from {len(images)} silhouettes: "
            f"{float(self.model.occupancy.occupied.float().mean()):.1%} of the box may hold the object"
        )

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        carve = TrainingCallback(
            [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.carve_visual_hull, update_every_num_iters=1
        )
        return [carve] + super().get_training_callbacks(training_callback_attributes)

    # --------------------------------------------------------------------------------------------- inspection
    def training_views(self) -> MADDataset:
        """The posed defect-free views: the database of pose retrieval."""
        dataset = getattr(self.datamanager, "train_dataset", None)
        if dataset is None:  # "inference" mode loads no dataset
            outputs = self.datamanager.dataparser.get_dataparser_outputs(split="train")
            dataset = MADDataset(outputs)
        return dataset

    def test_queries(self) -> MADDataset:
        """The test split: pose-free query images with their labels, defect types and ground-truth masks."""
        dataset = getattr(self.datamanager, "eval_dataset", None)
        if dataset is None or dataset.metadata.get("split") != "test":
            dataset = MADDataset(self.datamanager.dataparser.get_dataparser_outputs(split="test"))
        return dataset

    def detector(self) -> Tuple[PoseEstimator, AnomalyScorer]:
        """The pose estimator and the anomaly scorer, built on first use from the trained field.

        Both are derived state (retrieval index, keypoints, backbone), rebuilt after loading a checkpoint rather
        than stored in it. Call ``reset_detector`` after changing the field.
        """
        if self._detector is None:
            started = time.perf_counter()
            scorer = self.config.scorer.setup().to(self.device)
            views = self.training_views()
            cameras = views.cameras
            images = [views.get_image_float32(i) for i in range(len(views))]
            photos = None
            if views.on_backdrop:
                photos = [torch.from_numpy(views.get_photo(i).astype(np.float32) / 255.0) for i in range(len(views))]
            intrinsics = torch.stack([cameras.fx[:, 0], cameras.fy[:, 0], cameras.cx[:, 0], cameras.cy[:, 0]], -1)
            estimator = self.config.localisation.setup(
                model=self.model,
                camera_to_worlds=cameras.camera_to_worlds,
                intrinsics=intrinsics,
                image_size=(int(cameras.width[0]), int(cameras.height[0])),
                images=images,
                backbone=scorer.backbone,
                retrieval_images=photos,
            )
            self._detector = (estimator, scorer)
            self._on_backdrop = views.on_backdrop
            self._rendering_error = None
            if self.config.rendering_error_views > 0:
                self._rendering_error = self._fit_rendering_error(views, images)
            CONSOLE.log(f"Pose index over {len(images)} training views built in {time.perf_counter() - started:.1f} s")
        return self._detector

    def _fit_rendering_error(self, views: MADDataset, images: List[Tensor]) -> RenderingErrorModel:
        """Measure the scorer's map of defect-free training views against renderings near their poses."""
        estimator, scorer = self._detector
        cameras = views.cameras
        positions = cameras.camera_to_worlds[:, :3, 3].numpy()
        chosen = spread_subset(positions - positions.mean(0), self.config.rendering_error_views).tolist()
        generator = torch.Generator().manual_seed(0)
        maps, cues = [], []
        for view in chosen:
            image = images[view]
            axis = torch.randn(3, generator=generator, dtype=torch.float64)
            pose = orbit(cameras.camera_to_worlds[view], axis, self.config.rendering_error_pose_deg, estimator.centre)
            rendering = self.render_reference(pose, image.shape[1], image.shape[0])
            unsmoothed = scorer.unsmoothed(image.permute(2, 0, 1)[None], rendering["rgb"].permute(2, 0, 1)[None])
            maps.append(unsmoothed[0].cpu().numpy())
            size = maps[-1].shape[-1]
            cues.append(rendering_cues(rendering["rgb"], rendering["depth"], rendering["accumulation"], size))
        model = RenderingErrorModel.fit(maps, cues)
        summary = ", ".join(f"{name} {value:.1f}x" for name, value in model.summary().items())
        CONSOLE.log(f"Rendering error of the field by silhouette distance (vs its interior): {summary}")
        return model

    def reset_detector(self) -> None:
        self._detector = None

    @torch.no_grad()
    def inspect(self, query_image: Float[Tensor, "H W 3"]) -> Inspection:
        """Localise one pose-free query image, render its anomaly-free reference and score it.

        Args:
            query_image: RGB in [0, 1] (or uint8), any size with the training views' aspect ratio.

        Example:
            >>> inspection = pipeline.inspect(query)  # doctest: +SKIP
            >>> inspection.score, inspection.anomaly_map.shape  # doctest: +SKIP
            (0.0123, torch.Size([224, 224]))
        """
        query = torch.as_tensor(query_image)
        if not query.is_floating_point():
            query = query.float() / 255.0
        query = query[..., :3].cpu()
        estimator, scorer = self.detector()
        self.model.eval()
        seconds: Dict[str, float] = {}

        clock = time.perf_counter()
        camera_to_world, diagnostics = estimator.estimate_pose(query, on_backdrop=self._on_backdrop)
        if self._on_backdrop:
            # Cut the object out along its rendered silhouette, then fit again on the cut-out: the field knows
            # only the object on white, so the backdrop must not pull on the pose or reach the comparison.
            first_pose = camera_to_world
            accumulation = self.render_reference(first_pose, query.shape[1], query.shape[0])["accumulation"]
            cut_out = _on_white(query, self.segment_query(query, accumulation, self.config.backdrop_band_coarse))
            camera_to_world, refit = estimator.refine(cut_out, [first_pose])
            diagnostics.update(pose_before_cut_out=first_pose, score=refit["score"])
        seconds["pose"] = time.perf_counter() - clock

        clock = time.perf_counter()
        rendering = self.render_reference(camera_to_world, query.shape[1], query.shape[0])
        reference, accumulation = rendering["rgb"], rendering["accumulation"]
        seconds["render"] = time.perf_counter() - clock

        clock = time.perf_counter()
        if self._on_backdrop:  # the reference's silhouette cuts the query out for scoring
            query = _on_white(query, self.segment_query(query, accumulation, self.config.backdrop_band))
        colour_transform = identity_transform()
        if self.config.scorer.colour_fit:
            reference, colour_transform = match_colours(reference, query)
        discount = None
        if self._rendering_error is not None:
            # The cues of the rendering as calibrated (before the query's colours were given to it).
            cues = rendering_cues(rendering["rgb"], rendering["depth"], accumulation, self.config.scorer.map_size)
            discount = self._rendering_error.discount(cues)[None]
        maps, scores = scorer(query.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None], discount)
        if self._on_backdrop:
            maps, scores = self._only_near_object(maps, accumulation)
        seconds["score"] = time.perf_counter() - clock
        diagnostics.pop("reference", None)  # a rendering at the pre-refinement pose; ours supersedes it
        return Inspection(
            camera_to_world, reference, maps[0].cpu(), float(scores[0]), diagnostics, colour_transform, seconds
        )

    def segment_query(self, query: Float[Tensor, "H W 3"], accumulation: Tensor, band: float) -> np.ndarray:
        """Object mask of a query photographed on a backdrop, from the field's opacity rendered at its estimated
        pose (at the query's size); ``band`` (fraction of the longer side) is how far the outline may be off."""
        height, width = query.shape[:2]
        photo = (query.numpy() * 255.0).round().astype(np.uint8)
        return segment_object(photo, accumulation.numpy() > 0.5, max(2, round(band * max(width, height))))

    def _only_near_object(self, maps: Tensor, accumulation: Tensor) -> Tuple[Tensor, Tensor]:
        """Zero the map away from the object's silhouette (dilated by ``backdrop_band``): what a segmentation
        error leaves of the backdrop there is no defect of the object."""
        size = maps.shape[-1]
        silhouette = (accumulation[None, None] > 0.5).float()
        silhouette = F.interpolate(silhouette, size=(size, size), mode="area")[0]
        radius = max(1, round(self.config.backdrop_band * size))
        near = F.max_pool2d(silhouette, 2 * radius + 1, stride=1, padding=radius) > 0
        _, scorer = self.detector()
        maps = maps * near.to(maps.dtype)
        return maps, image_scores(maps, scorer.config.score_rule, scorer.config.pool_size)

    def render_reference(self, camera_to_world: Float[Tensor, "3 4"], width: int, height: int) -> Dict[str, Tensor]:
        """The field's canonical-colour rendering at a query's pose, on the CPU: "rgb" (height, width, 3) in [0, 1],
        "accumulation" (opacity) and "depth", each (height, width).

        Rendered at most ``reference_max_side`` pixels wide or high and resized to (width, height) when larger.
        """
        estimator, _ = self.detector()
        max_side = max(self.config.reference_max_side, self.config.scorer.map_size)
        scale = min(1.0, max_side / max(width, height))
        render_width, render_height = max(8, round(width * scale)), max(8, round(height * scale))
        intrinsics = estimator.query_intrinsics(render_width, render_height).float().to(self.device)
        rendering = self.model.render_image(camera_to_world.to(self.device), intrinsics, render_width, render_height)
        channels = [rendering["rgb"].clamp(0.0, 1.0), rendering["accumulation"], rendering["depth"]]
        reference = torch.cat(channels, dim=-1).cpu()
        if (render_width, render_height) != (width, height):
            reference = F.interpolate(
                reference.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False
            )[0].permute(1, 2, 0)
        return {"rgb": reference[..., :3], "accumulation": reference[..., 3], "depth": reference[..., 4]}

    # --------------------------------------------------------------------------------------------- evaluation
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, Any]:
        """PAD metrics over the test split (what `ns-eval` reports), with an optional report under output_path.

        Returns image/pixel AUROC, AUPRO, F1-max, per-defect-type AUROCs, num_queries, seconds_per_query and,
        when the class has test_poses.json, the pose error against the true poses.
        """
        queries = self.test_queries()
        class_dir = Path(queries.metadata["class_dir"])
        true_poses = read_true_poses(class_dir)
        estimator, _ = self.detector()  # built before the clock starts: a one-off cost per class, not per query
        records: List[QueryRecord] = []
        started = time.perf_counter()
        with live_or_plain_progress(CONSOLE) as progress:  # a plain line every ~10 % when the output is a log file
            for index in progress.track(range(len(queries)), description=f"Inspecting {class_dir.name} queries"):
                item = queries[index]
                path = Path(queries.image_filenames[index])
                relative = path.relative_to(class_dir).as_posix()
                inspection = self.inspect(item["image"][..., :3])
                records.append(
                    QueryRecord(
                        image_path=relative,
                        label=int(item["label"]),
                        defect_type=str(item["defect_type"]),
                        score=inspection.score,
                        anomaly_map=inspection.anomaly_map.numpy(),
                        gt_mask=item["gt_mask"].numpy(),
                        camera_to_world=inspection.camera_to_world.numpy(),
                        query=item["image"][..., :3].numpy(),
                        reference=inspection.reference.numpy(),
                        seconds=sum(inspection.seconds.values()),
                        **pose_errors(inspection.camera_to_world, true_poses.get(relative), estimator.centre),
                    )
                )
        elapsed = time.perf_counter() - started
        # The PAD protocol compares maps and masks at 224 px, whatever size the scorer works at.
        results = summarise_records(records, elapsed)
        if output_path is not None:
            write_report(Path(output_path), records, results, title=class_dir.name)
            CONSOLE.log(f"Anomaly panels, scores.csv, poses.json and curves written to {output_path}")
        return results


def _on_white(query: Float[Tensor, "H W 3"], mask: np.ndarray) -> Float[Tensor, "H W 3"]:
    return torch.where(torch.from_numpy(mask)[..., None], query, torch.ones(()))


def _fill_missing_fields(config: Any) -> None:
    """Give fields added since a config.yml was written their defaults (YAML restores objects without __init__)."""
    for config_field in dataclasses.fields(config):
        if not hasattr(config, config_field.name):
            if config_field.default_factory is not dataclasses.MISSING:
                setattr(config, config_field.name, config_field.default_factory())
            elif config_field.default is not dataclasses.MISSING:
                setattr(config, config_field.name, config_field.default)


def pose_errors(estimate: Tensor, truth: Optional[np.ndarray], centre: Tensor) -> Dict[str, Optional[float]]:
    if truth is None:
        return {"rotation_error_deg": None, "translation_error_pct": None}
    truth_tensor = torch.as_tensor(truth[:3, :4])
    estimate = estimate.double()
    return {
        "rotation_error_deg": float(rotation_error_deg(estimate, truth_tensor)),
        "translation_error_pct": float(translation_error_percent(estimate, truth_tensor, centre)),
    }
