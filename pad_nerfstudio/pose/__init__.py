"""Pose-agnostic localisation of query images through the frozen radiance field.

``se3`` holds the pure pose maths (corrections, conventions, errors), ``retrieval`` the 64-D global descriptor
and its FAISS index, ``matching`` SIFT + PnP initialisation from retrieved training views, ``alignment`` the
robust direct image alignment to a rendering, and ``refine`` the `PoseEstimator` that chains them
(``estimate_pose(query) -> (camera_to_world, diagnostics)``). Submodules are imported explicitly (``from
pad_nerfstudio.pose.refine import PoseEstimatorConfig``) so that importing this package stays free of torch, faiss
and OpenCV.
"""
