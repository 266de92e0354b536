"""Feature-match + PnP initialisation: from a retrieved training view to a pose within a degree or so.

The nearest training view is typically 5-14 degrees away from a MAD query, too far for photometric
alignment to converge. Training views, however, come with poses, and the frozen field gives the depth of any
of their pixels, so every SIFT keypoint of a training image is a 3D point of the object. Matching the query's
SIFT keypoints to those of a few retrieved views (Lowe's ratio test) yields 2D-3D correspondences, and
RANSAC PnP turns them into a pose while discarding wrong matches, including those on a defect. Each
retrieved view gives one hypothesis; a solution far from the view it came from is a spurious consensus and is
dropped. Small renders of plain bricks give few keypoints (tens), so inlier counts are weak evidence: the
caller renders the best few hypotheses and lets the photometric fit decide. The keypoint database
(descriptors plus 3D points) is derived state, built once from the training images and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from pad_nerfstudio.pose.se3 import opencv_intrinsics_matrix, opencv_to_opengl, rotation_error_deg

__all__ = ["KeypointDatabase", "MatchingConfig", "PnPHypothesis", "sift_features", "to_gray_uint8"]

DepthRenderer = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(camera_to_world [3,4], intrinsics [4], pixels [n,2]) -> (depth [n], accumulation [n]) along unit rays."""


@dataclass
class MatchingConfig:
    """SIFT matching and PnP settings."""

    contrast_threshold: float = 0.02
    """SIFT contrast threshold; lower than OpenCV's 0.04 because small renders of plain bricks have few corners."""
    ratio: float = 0.8
    """Lowe's ratio test threshold."""
    min_accumulation: float = 0.9
    """Keypoints whose field opacity is lower (on the outline, half background) get no 3D point."""
    ransac_threshold_px: float = 2.0
    """RANSAC inlier threshold, in pixels of a 200 px image (scaled with the query size)."""
    max_side: int = 320
    """Images (training views and queries) are searched for keypoints scaled down to at most this longer side, so
    building the database and matching a query cost the same for 800 px images as for 320 px ones."""
    ransac_iterations: int = 500
    """RANSAC iterations per PnP problem."""
    min_inliers: int = 8
    """Fewer PnP inliers than this and the hypothesis falls back to the retrieved view's own pose."""
    max_view_distance_deg: float = 30.0
    """A PnP pose further than this from the view whose keypoints produced it is a spurious consensus (the query
    cannot be far from a view it shares that many features with) and is rejected."""
    pooled: bool = False
    """Also solve PnP on all retrieved views' matches together (measured: more spurious consensus than help)."""
    seed: int = 0
    """Seed of OpenCV's RANSAC sampling."""


@dataclass
class PnPHypothesis:
    """A candidate query pose from one retrieved view."""

    camera_to_world: Float[Tensor, "3 4"]
    view: int
    """Index of the database view the correspondences came from."""
    inliers: int
    """PnP inliers (0 when PnP failed and the pose is the view's own)."""
    matches: int
    """2D-3D correspondences after the ratio test."""
    query_points: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2)))
    """Inlier query keypoints (n, 2), OpenCV pixel coordinates."""
    world_points: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))
    """Their 3D points (n, 3)."""
    inlier_indices: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Indices of the inliers among the correspondences that went into RANSAC."""
    pooled: bool = False
    """Solved from the correspondences of all retrieved views together (``view`` = the view with most inliers)."""


def to_gray_uint8(image: Float[Tensor, "H W 3"] | np.ndarray) -> np.ndarray:
    """8-bit grayscale of an RGB image in [0, 1]."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)


def sift_features(
    gray: np.ndarray, contrast_threshold: float = 0.02, max_side: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoint positions (n, 2) as float64 OpenCV pixel coordinates and descriptors (n, 128) float32.

    With ``max_side`` > 0, larger images are detected scaled down to that longer side and the positions mapped
    back to the image's own pixels: keypoints only seed PnP, which the photometric rounds refine, so detecting on
    an 800 px image would cost time (and many more matches) for nothing.
    """
    height, width = gray.shape[:2]
    scale = min(1.0, max_side / max(height, width)) if max_side > 0 else 1.0
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    sift = cv2.SIFT_create(contrastThreshold=contrast_threshold)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) == 0:
        return np.zeros((0, 2)), np.zeros((0, 128), dtype=np.float32)
    points = np.array([k.pt for k in keypoints], dtype=np.float64)
    if scale < 1.0:  # OpenCV pixel centres sit at integer coordinates: scale about the half-pixel corner
        points = (points + 0.5) * np.array([width / gray.shape[1], height / gray.shape[0]]) - 0.5
    return points, descriptors.astype(np.float32)


@dataclass
class _ViewKeypoints:
    descriptors: np.ndarray
    points: np.ndarray


class KeypointDatabase:
    """SIFT keypoints of the training views lifted to 3D with the field's depth."""

    def __init__(self, config: Optional[MatchingConfig] = None) -> None:
        self.config = config or MatchingConfig()
        self.views: List[_ViewKeypoints] = []
        self.poses: Optional[Tensor] = None

    @torch.no_grad()
    def build(
        self,
        images: Sequence[Float[Tensor, "H W 3"]],
        poses: Float[Tensor, "N 3 4"],
        intrinsics: Float[Tensor, "N 4"],
        render_depth: DepthRenderer,
    ) -> "KeypointDatabase":
        """Detect keypoints in every view and give each a 3D point from ``render_depth`` (the frozen field)."""
        self.views = []
        self.poses = torch.zeros(0, 3, 4, dtype=torch.float64)
        return self.add(images, poses, intrinsics, render_depth)

    @torch.no_grad()
    def add(
        self,
        images: Sequence[Float[Tensor, "H W 3"]],
        poses: Float[Tensor, "N 3 4"],
        intrinsics: Float[Tensor, "N 4"],
        render_depth: DepthRenderer,
    ) -> "KeypointDatabase":
        """Append views (e.g. field renders on a finer pose grid); view indices continue after the existing ones."""
        poses = torch.as_tensor(poses)[..., :3, :4].detach().cpu().double()
        self.poses = poses if self.poses is None else torch.cat([self.poses, poses])
        for image, pose, k in zip(images, poses, intrinsics):
            gray = to_gray_uint8(image)
            pixels, descriptors = sift_features(gray, self.config.contrast_threshold, self.config.max_side)
            points = np.zeros((0, 3))
            if len(pixels):
                # The field's rays take pixel indices and add the half pixel, exactly OpenCV's coordinates.
                depth, accumulation = render_depth(pose.float(), k.float(), torch.from_numpy(pixels).float())
                keep = (accumulation >= self.config.min_accumulation).numpy() & (depth > 0).numpy()
                fx, fy, cx, cy = (float(v) for v in k)
                directions = np.stack(
                    [(pixels[:, 0] + 0.5 - cx) / fx, -(pixels[:, 1] + 0.5 - cy) / fy, -np.ones(len(pixels))], axis=1
                )
                directions /= np.linalg.norm(directions, axis=1, keepdims=True)
                world = directions @ pose[:, :3].numpy().T * depth.double().numpy()[:, None] + pose[:, 3].numpy()
                points, descriptors = world[keep], descriptors[keep]
            self.views.append(_ViewKeypoints(descriptors=descriptors, points=points))
        return self

    def hypotheses(
        self,
        query_pixels: np.ndarray,
        query_descriptors: np.ndarray,
        query_intrinsics: Float[Tensor, "4"],
        query_size: tuple[int, int],
        view_ids: Sequence[int],
    ) -> List[PnPHypothesis]:
        """One PnP hypothesis per database view in ``view_ids``, most inliers first (ties keep retrieval order).

        Views without a plausible PnP solution contribute their own pose (0 inliers). With ``config.pooled`` one
        more hypothesis is solved from all views' matches together.
        """
        if self.poses is None:
            raise RuntimeError("The keypoint database is empty: call KeypointDatabase.build(...) first.")
        camera_matrix = opencv_intrinsics_matrix(query_intrinsics)
        threshold = self.config.ransac_threshold_px * max(query_size) / 200.0
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        results = []
        pooled_image, pooled_world, pooled_view = [], [], []
        for view_id in view_ids:
            view = self.views[view_id]
            fallback = PnPHypothesis(self.poses[view_id].clone(), view_id, 0, 0)
            results.append(fallback)
            if len(view.descriptors) < 2 or len(query_descriptors) < 2:
                continue
            pairs = matcher.knnMatch(query_descriptors, view.descriptors, k=2)
            good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.config.ratio * p[1].distance]
            fallback.matches = len(good)
            if not good:
                continue
            image_points = query_pixels[[m.queryIdx for m in good]]
            world_points = view.points[[m.trainIdx for m in good]]
            pooled_image.append(image_points)
            pooled_world.append(world_points)
            pooled_view.append(np.full(len(good), view_id))
            solved = self._solve(world_points, image_points, camera_matrix, threshold, view_id)
            if solved is not None and self._plausible(solved, view_id):
                results[-1] = solved
        # All views' correspondences in one RANSAC. Off by default: on 80 MAD-like queries the wrong matches of
        # several views formed spurious 10-20 inlier consensus poses (up to 146 degrees off) more often than the
        # pooled solution beat the best single view.
        if self.config.pooled and len(pooled_image) > 1:
            views = np.concatenate(pooled_view)
            solved = self._solve(
                np.concatenate(pooled_world), np.concatenate(pooled_image), camera_matrix, threshold, -1
            )
            if solved is not None:
                solved.view = int(np.bincount(views[solved.inlier_indices]).argmax())
            if solved is not None and self._plausible(solved, solved.view):
                solved.pooled = True
                results.append(solved)
        order = sorted(range(len(results)), key=lambda i: (-results[i].inliers, i))
        return [results[i] for i in order]

    def _plausible(self, hypothesis: PnPHypothesis, view_id: int) -> bool:
        angle = rotation_error_deg(hypothesis.camera_to_world, self.poses[view_id])
        return bool(angle <= self.config.max_view_distance_deg)

    def _solve(
        self, world_points: np.ndarray, image_points: np.ndarray, camera_matrix: np.ndarray, threshold: float, view: int
    ) -> Optional[PnPHypothesis]:
        """RANSAC PnP then Levenberg-Marquardt on the inliers; None when there is not enough support."""
        if len(world_points) < max(6, self.config.min_inliers):
            return None
        ok, rvec, tvec, inliers = self._ransac(world_points, image_points, camera_matrix, threshold)
        if not ok or inliers is None or len(inliers) < self.config.min_inliers:
            return None
        inliers = inliers[:, 0]
        rvec, tvec = cv2.solvePnPRefineLM(world_points[inliers], image_points[inliers], camera_matrix, None, rvec, tvec)
        return PnPHypothesis(
            _camera_to_world(rvec, tvec),
            view,
            len(inliers),
            len(world_points),
            query_points=image_points[inliers],
            world_points=world_points[inliers],
            inlier_indices=inliers,
        )

    def _ransac(self, world_points: np.ndarray, image_points: np.ndarray, camera_matrix: np.ndarray, threshold: float):
        """RANSAC PnP, deterministic for the seed; SQPnP minimal solver, EPnP where SQPnP rejects a sample."""
        for flags in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_EPNP):
            cv2.setRNGSeed(self.config.seed)
            try:
                return cv2.solvePnPRansac(
                    world_points,
                    image_points,
                    camera_matrix,
                    None,
                    iterationsCount=self.config.ransac_iterations,
                    reprojectionError=threshold,
                    confidence=0.999,
                    flags=flags,
                )
            except cv2.error:  # SQPnP asserts on (near-)degenerate minimal samples
                continue
        return False, None, None, None


def _camera_to_world(rvec: np.ndarray, tvec: np.ndarray) -> Tensor:
    """OpenGL camera-to-world from OpenCV's world-to-camera rotation vector and translation."""
    rotation, _ = cv2.Rodrigues(rvec)
    camera_to_world = np.concatenate([rotation.T, -rotation.T @ tvec.reshape(3, 1)], axis=1)
    return opencv_to_opengl(torch.from_numpy(camera_to_world))
