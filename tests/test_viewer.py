"""The viewer's inspection panel without a browser: its callbacks on a tiny trained scene, a recording viser server.

The scene is the session's briefly trained pipeline (conftest.py `tiny_scene`, shared with the field and pose tests).

`scripts/viewer_screenshot.py` drives the same panel in headless Chromium through `ns-viewer`; this test runs in CI.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import re
import types

import cv2
import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement
from PIL import Image

from pad_nerfstudio.viewer import InspectionPanel
from pad_nerfstudio.viewer.anomaly_output import warp_to_camera
from pad_nerfstudio.viewer.scene import nerfstudio_pose, viser_pose


# ------------------------------------------------------------------------------------------------ pure functions
def test_viser_pose_round_trip_and_scale():
    angle = 0.4
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    pose = torch.cat([rotation, torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)], dim=1)
    wxyz, position = viser_pose(pose)
    assert position.tolist() == pytest.approx([10.0, -20.0, 5.0])  # nerfstudio's viser scale
    assert torch.allclose(nerfstudio_pose(wxyz, position), pose, atol=1e-9)


def test_warp_to_camera_matches_a_centred_zoom():
    rows, cols = np.mgrid[0:40, 0:60].astype(np.float32)
    image = np.stack([rows / 40, cols / 60, 0.5 + 0.4 * np.sin(rows / 5) * np.cos(cols / 7)], axis=-1)
    # A camera with twice the focal length at the same pose sees the central half of the image, twice as large.
    zoomed = warp_to_camera(image, [50.0, 50.0, 30.0, 20.0], [100.0, 100.0, 30.0, 20.0], (60, 40))
    expected = cv2.resize(image[10:30, 15:45], (60, 40), interpolation=cv2.INTER_LINEAR)
    assert np.abs(zoomed[2:-2, 2:-2] - expected[2:-2, 2:-2]).max() < 1e-4
    back = warp_to_camera(zoomed, [100.0, 100.0, 30.0, 20.0], [50.0, 50.0, 30.0, 20.0], (60, 40), border_value=-1)
    assert (back[:8] == -1).all() and np.abs(back[12:28, 17:43] - image[12:28, 17:43]).max() < 0.02


# ---------------------------------------------------------------------------------------------- a trained scene
class RecordingServer:
    """Stands in for the viewer's viser server: records scene calls, holds one browser camera."""

    def __init__(self) -> None:
        self.calls: list = []
        self.client = types.SimpleNamespace(
            camera=types.SimpleNamespace(position=None, wxyz=None, fov=None, look_at=None),
            atomic=contextlib.nullcontext,
        )
        self.scene = types.SimpleNamespace(add_camera_frustum=self.add_camera_frustum)

    def add_camera_frustum(self, name, **kwargs):
        handle = types.SimpleNamespace(name=name, removed=False, visible=True, **kwargs)
        handle.remove = lambda: setattr(handle, "removed", True)
        self.calls.append(handle)
        return handle

    def get_clients(self):
        return {0: self.client}


@pytest.fixture(scope="module")
def pipeline(tiny_scene):
    """The pipeline as ns-viewer builds it (test mode) on the 48 px class, its field trained briefly (conftest.py)."""
    return tiny_scene.pipeline


@pytest.fixture(scope="module")
def inspected(pipeline):
    """The panel after choosing a defective test query and pressing "Localise & detect", with a recording server."""
    panel = pipeline.inspection
    server = RecordingServer()
    panel.viewer_control._setup(types.SimpleNamespace(viser_server=server))  # what the viewer does on start
    query = next(option for option in panel.step1_choose_query.options if "good" not in option)
    panel.step1_choose_query.value = query
    panel.on_query_selected(panel.step1_choose_query)
    panel.on_localise_clicked(panel.step2_localise)
    return panel, server


@pytest.mark.slow
def test_nerfstudio_finds_the_panel_and_its_controls(pipeline):
    paths = dict(parse_object(pipeline, ViewerElement, "Custom Elements"))
    panel = pipeline.inspection
    assert isinstance(panel, InspectionPanel)
    assert paths["Custom Elements/inspection/step2_localise"] is panel.step2_localise
    # nerfstudio installs them in name order: the panel reads top to bottom in the order of use
    names = [path.split("/")[-1] for path in paths if path.startswith("Custom Elements/inspection/")]
    assert names[:3] == ["step1_choose_query", "step1_or_upload_image", "step2_localise"]
    controls = [control for _, control in parse_object(pipeline, ViewerControl, "Custom Elements")]
    assert panel.viewer_control in controls
    options = panel.step1_choose_query.options
    assert len(options) == 9 and "test/good/0.png (good)" in options  # 3 good, 2 of each of 3 defect types
    assert "test/Burrs/1.png (Burrs)" in options
    assert not panel.step2_localise.disabled  # test mode: a loaded field is usable at once


@pytest.mark.slow
def test_localise_shows_score_picture_and_decision(inspected):
    panel, _ = inspected
    result = panel.result
    assert result is not None, panel.step2_status.content
    assert math.isfinite(result.inspection.score) and result.inspection.score > 0
    assert result.source.defect_type != "good" and result.gt_mask is not None and result.gt_mask.any()
    assert result.pose_error_deg is not None and result.pose_error_deg < 20.0
    content = panel.step3_result.content
    match = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", content)
    assert match, content[:200]
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))))
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.std() > 10  # a 2 x 2 grid of real images
    assert f"`{result.source.name}`" in content and "Inspected" in panel.step2_status.content
    assert not panel.step2_localise.disabled and not panel.step5_go_to_estimated_pose.disabled


@pytest.mark.slow
def test_decision_follows_the_threshold_slider(inspected):
    panel, _ = inspected
    score = panel.result.inspection.score
    slider = panel.step4_decision_threshold
    slider.value = math.log10(score) - 0.2
    panel.on_threshold_changed(slider)
    assert "**ANOMALOUS**" in panel.step3_result.content and panel.threshold < score
    low_threshold_picture = panel.step3_result.content
    slider.value = math.log10(score) + 0.2
    panel.on_threshold_changed(slider)
    assert "**good**" in panel.step3_result.content and panel.threshold > score
    assert panel.step3_result.content != low_threshold_picture  # the heat map's scale follows the threshold too
    panel.step4_heatmap_opacity.value = 0.0
    panel.on_opacity_changed(panel.step4_heatmap_opacity)
    panel.step4_heatmap_opacity.value = 0.6


@pytest.mark.slow
def test_scene_shows_estimated_and_true_pose_and_the_camera_moves_there(inspected):
    panel, server = inspected
    result = panel.result
    frusta = {call.name: call for call in server.calls}
    assert set(frusta) == {"/inspection/estimated", "/inspection/true"}
    estimated_wxyz, estimated_position = viser_pose(result.inspection.camera_to_world)
    assert np.allclose(frusta["/inspection/estimated"].position, estimated_position)
    assert np.allclose(frusta["/inspection/true"].position, viser_pose(result.source.true_pose)[1])
    assert frusta["/inspection/estimated"].color != frusta["/inspection/true"].color
    assert frusta["/inspection/estimated"].image.shape[:2] == result.query.shape[:2]
    assert frusta["/inspection/true"].image is None  # lines only, so that both stay visible when they overlap
    camera = server.client.camera
    assert np.allclose(camera.position, estimated_position) and np.allclose(camera.wxyz, estimated_wxyz)
    assert camera.fov == pytest.approx(2 * math.atan(0.5 * result.query.shape[0] / float(result.query_intrinsics[1])))
    camera.position = None
    assert panel.go_to_estimated_pose() == 1 and np.allclose(camera.position, estimated_position)


@pytest.mark.slow
def test_anomaly_output_only_at_the_query_pose(inspected, pipeline):
    panel, server = inspected
    pose = panel.result.inspection.camera_to_world.float()
    fx, fy, _, _ = panel.result.query_intrinsics.tolist()

    def viewer_camera(camera_to_world):  # a wider browser window than the query, the query's field of view
        return Cameras(camera_to_worlds=camera_to_world[None], fx=fx, fy=fy, cx=40.0, cy=24.0, width=80, height=48)

    outputs = pipeline.model.get_outputs_for_camera(viewer_camera(pose))
    assert "anomaly" in outputs and outputs["anomaly"].shape == outputs["rgb"].shape
    assert all(not call.visible for call in server.calls)  # the view is through the query cameras: hidden
    heat = outputs["anomaly"]
    assert torch.isfinite(heat).all() and 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert not torch.allclose(heat, outputs["rgb"], atol=0.02)  # the heat map is drawn, not just the rendering
    moved = pose.clone()
    moved[:3, 3] *= 1.2
    assert "anomaly" not in pipeline.model.get_outputs_for_camera(viewer_camera(moved))
    assert all(call.visible for call in server.calls)


@pytest.mark.slow
def test_loading_an_image_from_disk(inspected, tiny_class):
    panel, _ = inspected
    buffer = io.BytesIO()
    Image.open(tiny_class / "test" / "good" / "0.png").save(buffer, format="PNG")
    label = panel.add_image("photo.png", buffer.getvalue())
    assert label == "loaded: photo.png" and panel.step1_choose_query.value == label
    assert panel.step1_choose_query.options[0] == label
    buffer = io.BytesIO()
    Image.new("RGB", (96, 48), "white").save(buffer, format="PNG")
    panel.add_image("wide.png", buffer.getvalue())
    assert panel.localise_and_detect() is None
    assert "crop it to the aspect ratio" in panel.step2_status.content
    assert panel.add_image("notes.txt", b"not an image") is None and "Cannot read" in panel.step2_status.content


@pytest.mark.slow
def test_panel_waits_for_the_field_during_training(pipeline):
    """In the viewer during training (test_mode "val"), the panel is disabled until the field is usable."""
    pipeline.test_mode = "val"
    try:
        panel = InspectionPanel(pipeline)
        assert panel.step2_localise.disabled and "training step" in panel.step2_status.content
        trainer = types.SimpleNamespace(step=10, training_state="training")
        panel.viewer_control._setup(types.SimpleNamespace(viser_server=RecordingServer(), trainer=trainer))
        assert not panel.field_is_usable() and not panel.refresh_availability()
        assert panel.localise_and_detect() is None and "now at step 10" in panel.step2_status.content
        assert panel.result is None and panel.step2_localise.disabled
        trainer.step = 600  # no render needed: the panel watches the trainer
        panel._watcher.join(timeout=10)
        assert not panel.step2_localise.disabled and "Localise & detect" in panel.step2_status.content
        assert panel.refresh_availability()
    finally:
        pipeline.test_mode = "test"
        pipeline.model.extra_outputs = pipeline.inspection.outputs_for_view


@pytest.mark.slow
def test_elements_install_into_a_real_viser_server(pipeline):
    """nerfstudio's viewer calls install(server) on each element; a real viser server accepts ours."""
    import viser

    server = viser.ViserServer(host="127.0.0.1", port=_free_port(), verbose=False)
    try:
        panel = pipeline.inspection
        with server.gui.add_folder("inspection"):
            for element in (panel.step1_or_upload_image, panel.step2_progress, panel.step3_result):
                element.install(server)
        panel.step3_result.content = "**installed**"
        panel.step2_progress.value = 50.0
        assert panel.step3_result.gui_handle.content == "**installed**"
        assert panel.step1_or_upload_image.value is None  # nothing uploaded yet
    finally:
        for element in (panel.step1_or_upload_image, panel.step2_progress, panel.step3_result):
            element.gui_handle = None
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
