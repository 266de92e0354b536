"""The "inspection" panel of the nerfstudio viewer: pick a query, localise it, see where it is and what is wrong.

`OmniposePipeline` creates the panel as its `inspection` attribute; nerfstudio's viewer discovers its elements
(they live on this `nn.Module` child of the pipeline) and installs them under "Custom Elements/inspection" in
`ns-viewer --load-config ...` and in the viewer during training. "Localise & detect" runs
`OmniposePipeline.inspect`, the very call `ns-eval` makes per query, then draws the query's camera at its
estimated pose (and at its true pose when test_poses.json has it) in the scene, moves the browser's camera there
and shows query, reference, heat map and ground truth with the score and the decision at the threshold. At that
pose the model also renders an "anomaly" output (see `anomaly_output.py`).

nerfstudio installs discovered elements in alphabetical order of their attribute names, hence the `stepN_`
prefixes: they make the panel read top to bottom in the order of use. nerfstudio also wraps every callback in the
trainer's lock (training pauses while a query is inspected) and re-renders the view after it.

During training the panel stays disabled until the field is usable: from step `MIN_TRAINING_STEPS`, or once
training has completed. The panel learns about training progress without a training callback of its own: the
first viewer render finds the trainer (through `ViewerControl`) and starts a small thread that polls its step
until the field is usable; clicks check again. The pose index is rebuilt whenever the field has trained further
since it was built.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerControl, ViewerDropdown, ViewerSlider
from PIL import Image
from torch import Tensor, nn

from pad_nerfstudio.anomaly.report import to_uint8
from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import read_true_poses
from pad_nerfstudio.inspection import Inspection
from pad_nerfstudio.pose.se3 import rotation_error_deg
from pad_nerfstudio.viewer.anomaly_output import anomaly_output
from pad_nerfstudio.viewer.display import heatmap_range, inspection_image, png_data_url, result_markdown
from pad_nerfstudio.viewer.elements import (
    ViewerMarkdown,
    ViewerProgressBar,
    ViewerUploadButton,
    set_enabled,
    set_shown,
)
from pad_nerfstudio.viewer.scene import (
    ESTIMATED_COLOUR,
    TRUE_COLOUR,
    draw_query_camera,
    is_at_pose,
    move_viewer_cameras,
    vertical_fov,
)


class Inspector(Protocol):
    """What the panel needs of the pipeline that owns it (`OmniposePipeline`), named here so that this module
    does not import the pipeline (which imports this module to build the panel)."""

    test_mode: str
    model: Any
    """The field: trained or not (`training`), and the hook for viewer renders (`extra_outputs`)."""

    def inspect(self, query_image: Tensor) -> Inspection: ...

    def test_queries(self) -> Any: ...

    def detector(self) -> Tuple[Any, Any]:
        """(pose estimator, anomaly scorer): the estimator's ``image_size``, ``query_intrinsics`` and ``centre``
        place the query's camera; the scorer paints the anomaly output of viewer renders."""
        ...

    def reset_detector(self) -> None: ...


__all__ = ["InspectionPanel", "QuerySource", "InspectionResult", "MIN_TRAINING_STEPS"]

MIN_TRAINING_STEPS = 500
"""During training, the panel works from this step on (the CPU preset's field renders the object well by then)."""
NO_QUERIES = "(no test queries)"
SCENE_ROOT = "/inspection"


@dataclass
class QuerySource:
    """One entry of the query dropdown: a test image of the class, or an image loaded from disk."""

    name: str
    """Path relative to the class folder ("test/Burrs/0.png") or the uploaded file's name."""
    index: Optional[int] = None
    """Index in the test split; None for an image loaded from disk."""
    content: Optional[bytes] = None
    """The file of an image loaded from disk (test images are read from the split when inspected)."""
    defect_type: Optional[str] = None
    true_pose: Optional[Tensor] = None
    """Camera-to-world from test_poses.json when the class has one (pad-synth classes do)."""


@dataclass
class InspectionResult:
    """What the panel shows: the query, the pipeline's `Inspection` of it, and what is known about it."""

    source: QuerySource
    query: np.ndarray
    """RGB in [0, 1] at the size it was inspected."""
    query_intrinsics: Tensor
    """(fx, fy, cx, cy) of ``query``."""
    inspection: Inspection
    centre: Tensor
    """Object centre (where the training cameras look)."""
    gt_mask: Optional[np.ndarray] = None
    pose_error_deg: Optional[float] = None


class InspectionPanel(nn.Module):
    """Viewer controls to inspect one query at a time; an attribute of the pipeline (created in its __init__).

    An `nn.Module` only so that nerfstudio's viewer looks inside it for elements; it holds no parameters.

    Args:
        pipeline: the pipeline to inspect with (held weakly: the pipeline owns the panel).
    """

    def __init__(self, pipeline: Inspector) -> None:
        super().__init__()
        self._pipeline_ref = weakref.ref(pipeline)
        self._sources: Dict[str, QuerySource] = {}
        self._result: Optional[InspectionResult] = None
        self._frusta: Dict[str, Any] = {}
        self._busy = threading.Lock()
        self._detector_step: Optional[int] = None
        self._watcher: Optional[threading.Thread] = None
        self._training = getattr(pipeline, "test_mode", "val") == "val"
        options = self._read_test_queries(pipeline) or [NO_QUERIES]
        self.viewer_control = ViewerControl()
        """Gives the viewer's viser server (scene, browser cameras) and its trainer, once a viewer is attached."""

        self.step1_choose_query = ViewerDropdown(
            "Query", options[0], options, cb_hook=self.on_query_selected, hint="Test image (defect type)"
        )
        self.step1_or_upload_image = ViewerUploadButton(
            "Load image from disk",
            cb_hook=self.on_image_uploaded,
            mime_type="image/*",
            hint="Any photo of the object with the training views' aspect ratio",
        )
        self.step2_localise = ViewerButton("Localise & detect", cb_hook=self.on_localise_clicked)
        self.step2_progress = ViewerProgressBar(visible=False)
        self.step2_status = ViewerMarkdown(self._idle_status(usable=not self._training))
        self.step3_result = ViewerMarkdown("")
        self.step4_decision_threshold = ViewerSlider(
            "Threshold (log10)",
            2.0,
            -1.0,
            4.0,
            0.01,
            cb_hook=self.on_threshold_changed,
            hint="Image-score threshold on a log scale (2.0 means a score of 100): scores vary by orders of "
            "magnitude with the backbone and the data, so no fixed linear range fits every class",
        )
        self.step4_heatmap_opacity = ViewerSlider(
            "Heat-map opacity", 0.6, 0.0, 1.0, 0.05, cb_hook=self.on_opacity_changed
        )
        self.step5_go_to_estimated_pose = ViewerButton("Go to estimated pose", cb_hook=self.on_go_to_pose_clicked)

        set_enabled(self.step2_localise, not self._training)
        set_enabled(self.step5_go_to_estimated_pose, False)
        pipeline.model.extra_outputs = self.outputs_for_view

    # ------------------------------------------------------------------------------------------------ callbacks
    def on_query_selected(self, dropdown: ViewerDropdown) -> None:
        self.refresh_availability()

    def on_image_uploaded(self, button: ViewerUploadButton) -> None:
        if button.value is not None:
            self.add_image(button.value.name, button.value.content)

    def on_localise_clicked(self, button: ViewerButton) -> None:
        self.localise_and_detect()

    def on_threshold_changed(self, slider: ViewerSlider) -> None:
        self.show_result()

    def on_opacity_changed(self, slider: ViewerSlider) -> None:
        self.show_result()

    def on_go_to_pose_clicked(self, button: ViewerButton) -> None:
        self.go_to_estimated_pose()

    # ------------------------------------------------------------------------------------------------ actions
    @property
    def _pipeline(self) -> Inspector:
        # Private on purpose: nerfstudio's viewer recurses into every public nn.Module attribute, and the pipeline
        # holds this panel (infinite recursion).
        pipeline = self._pipeline_ref()
        assert pipeline is not None, "the pipeline of this inspection panel no longer exists"
        return pipeline

    @property
    def result(self) -> Optional[InspectionResult]:
        """The last inspection shown, None before the first."""
        return self._result

    @property
    def threshold(self) -> float:
        """Decision threshold on the image score (the slider is on a log10 scale)."""
        return float(10.0 ** float(self.step4_decision_threshold.value))

    def add_image(self, name: str, content: bytes) -> Optional[str]:
        """Add an image file's bytes to the query dropdown and select it; returns its entry (None if unreadable)."""
        try:
            image = _read_image(content)
        except Exception:
            self.step2_status.content = f"**Cannot read `{name}`**: it is not an image file PIL can open."
            return None
        label = f"loaded: {name}"
        self._sources[label] = QuerySource(name=name, content=content)
        dropdown = self.step1_choose_query
        dropdown.set_options([label] + [option for option in dropdown.options if option not in (label, NO_QUERIES)])
        dropdown.value = label
        self.step2_status.content = f"Loaded `{name}` ({image.shape[1]} x {image.shape[0]}): press Localise & detect."
        return label

    def localise_and_detect(self) -> Optional[InspectionResult]:
        """Inspect the selected query with the pipeline, then show the result in the scene and in the panel."""
        if not self.refresh_availability():
            self.step2_status.content = self._idle_status(usable=False)
            return None
        source = self._sources.get(self.step1_choose_query.value)
        if source is None:
            self.step2_status.content = "No query selected: this class has no test images; load one from disk."
            return None
        if not self._busy.acquire(blocking=False):
            return None  # a double click while the first one runs
        started = time.perf_counter()
        try:
            with self._running():
                result = self._inspect(source)
            self._result = result
            self._draw_query_cameras(result)
            self.go_to_estimated_pose()
            self.show_result()
            set_enabled(self.step5_go_to_estimated_pose, True)
            cameras = "orange" + (", true pose green" if result.source.true_pose is not None else "")
            self.step2_status.content = (
                f"Inspected `{source.name}` in {time.perf_counter() - started:.1f} s; camera in the scene: {cameras}."
            )
            return result
        except _QueryError as error:
            self.step2_status.content = f"**Cannot inspect `{source.name}`**: {error}"
        except Exception as error:  # shown in the panel, where the user looks, and logged in full
            CONSOLE.print_exception()
            self.step2_status.content = f"**Inspection of `{source.name}` failed**: {type(error).__name__}: {error}"
        finally:
            self._busy.release()
        return None

    def show_result(self) -> None:
        """Redraw the result (picture, score, decision) at the current threshold and heat-map opacity."""
        result = self._result
        if result is None:
            return
        inspection, threshold = result.inspection, self.threshold
        anomaly_map = inspection.anomaly_map.numpy()
        picture = inspection_image(
            result.query,
            inspection.reference.numpy(),
            anomaly_map,
            heatmap_range(anomaly_map, threshold),
            float(self.step4_heatmap_opacity.value),
            result.gt_mask,
        )
        self.step3_result.content = result_markdown(
            result.source.name,
            result.source.defect_type,
            inspection.score,
            threshold,
            png_data_url(picture),
            inspection.seconds,
            result.pose_error_deg,
        )

    def go_to_estimated_pose(self) -> int:
        """Move the browsers' cameras to the last query's estimated pose; returns how many were moved."""
        server, result = self._server(), self._result
        if server is None or result is None:
            return 0
        fov = vertical_fov(result.query_intrinsics, result.query.shape[0])
        return move_viewer_cameras(server, result.inspection.camera_to_world, fov, result.centre)

    def refresh_availability(self) -> bool:
        """Enable the panel once the field is usable (see the module docstring); returns whether it is."""
        usable = self.field_is_usable()
        if usable and self.step2_localise.disabled and not self._busy.locked():
            set_enabled(self.step2_localise, True)
            self.step2_status.content = self._idle_status()
        elif not usable and self._watcher is None:
            # Renders are rare once training ends (none while the camera rests): watch the trainer instead.
            self._watcher = threading.Thread(target=self._watch_training, name="inspection-availability", daemon=True)
            self._watcher.start()
        return usable

    def field_is_usable(self) -> bool:
        trainer = self._trainer()
        if trainer is None:
            return True  # a loaded checkpoint (ns-viewer, ns-eval), or no viewer at all
        return trainer.training_state == "completed" or trainer.step >= MIN_TRAINING_STEPS

    # ---------------------------------------------------------------------------------- the model's extra output
    def outputs_for_view(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Extra outputs of a viewer render (`OmniposeModel.extra_outputs`): "anomaly" at the inspected pose."""
        self.refresh_availability()
        result = self._result
        if result is None or "rgb" not in outputs:
            return {}
        camera_to_world = camera.camera_to_worlds.reshape(3, 4)
        at_pose = is_at_pose(camera_to_world, result.inspection.camera_to_world, result.centre)
        self._show_query_cameras(not at_pose)  # at the pose the view would be through the frustum's image
        if not at_pose:
            return {}
        intrinsics = torch.cat([camera.fx, camera.fy, camera.cx, camera.cy]).flatten().cpu()
        _, scorer = self._pipeline.detector()
        opacity = float(self.step4_heatmap_opacity.value)
        heat = anomaly_output(
            outputs["rgb"], intrinsics, result.query, result.query_intrinsics, scorer, self.threshold, opacity
        )
        return {"anomaly": heat}

    # ------------------------------------------------------------------------------------------------ internals
    def _inspect(self, source: QuerySource) -> InspectionResult:
        pipeline = self._pipeline
        with self._stage("Building the pose index (first time only; about 20 s on a CPU)", 5.0):
            trainer = self._trainer()
            if trainer is not None and self._detector_step != trainer.step:
                pipeline.reset_detector()  # the field has trained since the index was built
                self._detector_step = trainer.step
            estimator, _ = pipeline.detector()
        query, gt_mask = self._load_query(source, estimator.image_size)
        with self._stage("Localising the query, rendering its reference, scoring", 25.0):
            was_training = pipeline.model.training
            try:
                inspection = pipeline.inspect(torch.from_numpy(query))
            finally:
                pipeline.model.train(was_training)
        height, width = query.shape[:2]
        pose_error = None
        if source.true_pose is not None:
            pose_error = float(rotation_error_deg(inspection.camera_to_world.double(), source.true_pose.double()))
        return InspectionResult(
            source=source,
            query=query,
            query_intrinsics=estimator.query_intrinsics(width, height).float().cpu(),
            inspection=inspection,
            centre=estimator.centre.detach().double().cpu(),
            gt_mask=gt_mask,
            pose_error_deg=pose_error,
        )

    def _load_query(self, source: QuerySource, view_size: Tuple[int, int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The query as RGB float32 in [0, 1] and its ground-truth mask (None when unknown).

        Images from disk are resized to the training views' size, as the dataset does with test images.
        """
        if source.content is None:
            item = self._pipeline.test_queries()[source.index]
            return item["image"][..., :3].float().numpy(), item["gt_mask"].numpy().astype(bool)
        with Image.open(io.BytesIO(source.content)) as header:  # the size only: pixels are decoded once, below
            width, height = header.size
        view_width, view_height = view_size
        if abs(width * view_height - height * view_width) > 0.02 * height * view_width:
            raise _QueryError(
                f"it is {width} x {height} pixels but the field was trained on {view_width} x {view_height} views; "
                f"crop it to the aspect ratio {view_width}:{view_height} first."
            )
        image = _read_image(source.content, (view_width, view_height))
        return image.astype(np.float32) / 255.0, None

    def _draw_query_cameras(self, result: InspectionResult) -> None:
        server = self._server()
        if server is None:
            return
        image = to_uint8(result.query)
        poses = {"estimated": (result.inspection.camera_to_world, ESTIMATED_COLOUR)}
        if result.source.true_pose is not None:
            poses["true"] = (result.source.true_pose, TRUE_COLOUR)
        for kind in [kind for kind in self._frusta if kind not in poses]:
            self._frusta.pop(kind).remove()  # a true pose left over from the previous query
        for kind, (pose, colour) in poses.items():
            self._frusta[kind] = draw_query_camera(
                server,
                f"{SCENE_ROOT}/{kind}",
                pose,
                result.query_intrinsics,
                result.query.shape[:2],
                colour,
                image if kind == "estimated" else None,  # the true pose's lines stay visible next to it
                result.centre,
            )

    def _watch_training(self, poll_s: float = 2.0) -> None:
        while not self.field_is_usable():
            time.sleep(poll_s)
        self.refresh_availability()

    def _show_query_cameras(self, shown: bool) -> None:
        for handle in self._frusta.values():
            if getattr(handle, "visible", shown) != shown:
                handle.visible = shown

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Grey out the inputs and show the progress bar while a query is inspected."""
        inputs: List[Any] = [self.step1_choose_query, self.step1_or_upload_image, self.step2_localise]
        for element in inputs:
            set_enabled(element, False)
        self.step2_progress.value, self.step2_progress.animated = 0.0, True
        set_shown(self.step2_progress, True)
        try:
            yield
        finally:
            for element in inputs:
                set_enabled(element, True)
            set_shown(self.step2_progress, False)
            self.step2_progress.animated = False

    @contextlib.contextmanager
    def _stage(self, text: str, progress: float) -> Iterator[None]:
        """Show a stage of the inspection with its elapsed time, ticking every second until it ends."""
        started, done = time.perf_counter(), threading.Event()
        self.step2_progress.value = progress
        self.step2_status.content = f"{text}..."

        def tick() -> None:
            while not done.wait(1.0):
                self.step2_status.content = f"{text}... {time.perf_counter() - started:.0f} s"

        ticker = threading.Thread(target=tick, name="inspection-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()

    def _idle_status(self, usable: bool = True) -> str:
        if not usable:
            trainer = self._trainer()
            step = f" (now at step {trainer.step})" if trainer is not None else ""
            return f"Available from training step {MIN_TRAINING_STEPS}{step}, once the field is usable."
        return "Choose a query (or load an image) and press **Localise & detect**."

    def _server(self) -> Optional[Any]:
        return getattr(self.viewer_control, "viser_server", None)

    def _trainer(self) -> Optional[Any]:
        return getattr(getattr(self.viewer_control, "viewer", None), "trainer", None)

    def _read_test_queries(self, pipeline: Inspector) -> List[str]:
        """Fill the dropdown's sources from the test split; an empty list when the class has no usable test split."""
        try:
            queries = pipeline.test_queries()
        except Exception as error:  # a class without test images can still be inspected with loaded images
            CONSOLE.log(f"Inspection panel: no test queries ({error})")
            return []
        class_dir = Path(queries.metadata["class_dir"])
        true_poses = read_true_poses(class_dir)
        for index, path in enumerate(queries.image_filenames):
            name = Path(path).relative_to(class_dir).as_posix()
            defect_type = str(queries.metadata["defect_types"][index])
            true_pose = true_poses.get(name)
            self._sources[f"{name} ({defect_type})"] = QuerySource(
                name=name,
                index=index,
                defect_type=defect_type,
                true_pose=None if true_pose is None else torch.from_numpy(true_pose[:3]),
            )
        return list(self._sources)


class _QueryError(ValueError):
    """A query the pipeline cannot inspect, explained to the user."""


def _read_image(content: bytes, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """An image file's bytes as RGB uint8 on white, optionally resized to (width, height): the dataset's reader."""
    return load_rgb(io.BytesIO(content), size)  # type: ignore[arg-type]  # PIL opens file objects too
