"""Pose accuracy and speed of the localisation stages against the true poses of `pad-synth` test queries.

For every test image (good and defective) of the given classes, the pose is estimated with
`PoseEstimator.estimate_pose` (which never sees the true pose) and compared with ``test_poses.json``:
rotation error (degrees, geodesic), translation error (% of the camera's distance to the object centre) and
the residual image misalignment (mean displacement in pixels of the visible object surface between the
estimated and the true pose), for the coarse stage alone (nearest training view), the PnP initialisation and
the final refined pose, with the seconds per query spent in each stage.

    python benchmarks/pose_accuracy.py --data data/pad-synth --field gorilla=outputs/gorilla/omnipose-ad/RUN/config.yml
    python benchmarks/pose_accuracy.py --data data/pad-synth --field gorilla=G.yml --field unicorn=U.yml --limit 20

``--oracle`` replaces the trained field by the generator's exact ray caster (no field error): it separates
what the pose method loses from what the field's rendering errors cost.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pad_nerfstudio.anomaly.backbone import load_backbone
from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import read_true_poses, resolve_class_dir
from pad_nerfstudio.pose.refine import PoseEstimatorConfig
from pad_nerfstudio.pose.se3 import (
    pixels_to_camera_directions,
    reprojection_displacement,
    rotation_error_deg,
    translation_error_percent,
)

CONSOLE = Console(width=150)


class SynthOracle:
    """Exact renderer of a `pad-synth` class (the generator's ray caster) with the field's rendering interface."""

    def __init__(self, class_name: str, seed: int = 0, supersample: int = 3) -> None:
        from pad_nerfstudio.synth.generate import _scene, resolve_class_names

        (name,) = resolve_class_names([class_name])
        self.scene = _scene(name, seed)
        self.supersample = supersample

    def render_image(self, camera_to_world: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int):
        from pad_nerfstudio.synth import raycast
        from pad_nerfstudio.synth.cameras import CAMERA_ANGLE_X

        if width != height or abs(float(intrinsics[2]) - width / 2) > 1e-3:
            raise ValueError("The synth oracle renders square, centred cameras only.")
        angle = 2 * math.atan(0.5 * width / float(intrinsics[0]))
        angle = angle if abs(angle - CAMERA_ANGLE_X) > 1e-6 else CAMERA_ANGLE_X
        pose = camera_to_world.detach().double().cpu().numpy()
        hits = raycast.trace(self.scene, pose, width, self.supersample, angle)
        rgb = raycast.compose(hits, raycast.shade(hits))
        hit = np.isfinite(hits.depth)
        accumulation = raycast.resolve(hit.astype(np.float64), width, self.supersample)
        # The ray caster reports z-depth; the field's depth is the distance along the unit ray.
        samples = (np.arange(width * self.supersample) + 0.5) / self.supersample
        x = (samples[None, :] - 0.5 * width) / hits.focal
        y = (samples[:, None] - 0.5 * width) / hits.focal
        stretch = np.sqrt(1 + x**2 + y**2).reshape(-1)
        distance = raycast.resolve(np.where(hit, hits.depth * stretch, 0.0), width, self.supersample)
        depth = np.where(accumulation > 0, distance / np.maximum(accumulation, 1e-9), 0.0)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
        return {
            "rgb": as_tensor(rgb),
            "depth": as_tensor(depth)[..., None],
            "accumulation": as_tensor(accumulation)[..., None],
        }

    def render_pixels(self, camera_to_world: torch.Tensor, intrinsics: torch.Tensor, pixels: torch.Tensor):
        width = int(round(2 * float(intrinsics[2])))
        full = self.render_image(camera_to_world, intrinsics, width, width)
        u = pixels[:, 0].long().clamp(0, width - 1)
        v = pixels[:, 1].long().clamp(0, width - 1)
        return {key: value[v, u] for key, value in full.items()}


def load_field(class_dir: Path, config_path: Path):
    """The trained field of an `ns-train omnipose-ad` run (its config.yml) and the class's training views."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    outputs = MADDataParserConfig(data=class_dir).setup().get_dataparser_outputs("train")
    return pipeline.model, outputs


def surface_points(reference, pose: torch.Tensor) -> torch.Tensor:
    """World points of the opaque pixels of a rendering (the object's visible surface)."""
    opaque = reference.accumulation[..., 0] > 0.95
    rows, cols = torch.nonzero(opaque, as_tuple=True)
    pixels = torch.stack([cols, rows], dim=-1).double()
    directions = pixels_to_camera_directions(pixels, reference.intrinsics.double()) @ pose[:3, :3].t()
    return pose[:3, 3] + directions * reference.depth[rows, cols].double()


def summarise(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "mean": float(np.mean(values)), "p95": float(np.percentile(values, 95))}


def run_class(class_dir: Path, field: str, args, backbone) -> list[dict]:
    if field == "oracle":
        attributes = json.loads((class_dir.parent / "attributes.json").read_text()).get(class_dir.name, {})
        model = SynthOracle(class_dir.name, seed=int(attributes.get("seed", 0)))
        outputs = MADDataParserConfig(data=class_dir).setup().get_dataparser_outputs("train")
    else:
        model, outputs = load_field(class_dir, Path(field))
    cameras = outputs.cameras
    images = [torch.from_numpy(load_rgb(path)).float() / 255 for path in outputs.image_filenames]
    intrinsics = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1)
    config = PoseEstimatorConfig(seed=args.seed)
    started = time.perf_counter()
    estimator = config.setup(
        model=model,
        camera_to_worlds=cameras.camera_to_worlds,
        intrinsics=intrinsics,
        image_size=(int(cameras.width[0]), int(cameras.height[0])),
        images=images,
        backbone=backbone,
    )
    CONSOLE.log(f"{class_dir.name}: estimator built in {time.perf_counter() - started:.1f} s")
    truth = read_true_poses(class_dir)  # only for measuring errors
    if not truth:
        raise SystemExit(f"{class_dir} has no test_poses.json: pose accuracy needs pad-synth's true query poses")
    # test_poses.json keys have no extension (they match .png and .jpg copies alike): list the images themselves.
    images = sorted(path.relative_to(class_dir).as_posix() for path in (class_dir / "test").glob("*/*.*"))
    names = [name for name in images if name in truth and fnmatch.fnmatch(name, args.match)][:: args.every]
    if args.limit:
        names = names[: args.limit]
    rows = []
    for name in names:
        query = torch.from_numpy(load_rgb(class_dir / name)).float() / 255
        true_pose = torch.from_numpy(truth[name])[:3]
        cpu = time.process_time()
        pose, diagnostics = estimator.estimate_pose(query)
        cpu = time.process_time() - cpu
        qk = estimator.query_intrinsics(query.shape[1], query.shape[0])
        reference = diagnostics["reference"]
        points = surface_points(reference, reference.camera_to_world.double()) if reference is not None else None
        row = {"class": class_dir.name, "query": name, "defective": not name.startswith("test/good"), "cpu_s": cpu}
        row.update(score=diagnostics["score"], retried=diagnostics["retried"])
        row.update({f"t_{k}": v for k, v in diagnostics["seconds"].items()})
        estimates = {"coarse": diagnostics["coarse_pose"], "pnp": diagnostics["pnp_pose"]}
        if args.stages:
            estimates.update(diagnostics["stage_poses"])
        estimates["final"] = pose
        for stage, estimate in estimates.items():
            estimate = estimate.double()
            row[f"{stage}_rot"] = float(rotation_error_deg(estimate, true_pose))
            row[f"{stage}_trans"] = float(translation_error_percent(estimate, true_pose, estimator.centre))
            if points is not None and len(points):
                row[f"{stage}_px"] = float(reprojection_displacement(points, estimate, true_pose, qk).mean())
        rows.append(row)
        CONSOLE.log(
            f"{class_dir.name} {name}: rot {row['coarse_rot']:.2f} -> {row['pnp_rot']:.2f} -> "
            f"{row['final_rot']:.3f} deg, "
            f"{row.get('final_px', float('nan')):.3f} px, {row['t_total']:.1f} s (cpu {cpu:.1f} s), "
            f"view {diagnostics['chosen_view']} of {diagnostics['hypothesis_views']}"
        )
    return rows


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in (
        "stage",
        "rot med",
        "rot mean",
        "rot p95",
        "<0.25°",
        "<1°",
        "<2°",
        "trans% med",
        "trans% mean",
        "trans% p95",
        "px med",
        "px p95",
    ):
        table.add_column(column, justify="right")
    stages = [s for s in rows[0] if s.endswith("_rot")]
    for stage in [s[: -len("_rot")] for s in stages]:
        rot = np.array([r[f"{stage}_rot"] for r in rows])
        trans = np.array([r[f"{stage}_trans"] for r in rows])
        px = np.array([r[f"{stage}_px"] for r in rows if f"{stage}_px" in r])
        s_rot, s_trans = summarise(rot), summarise(trans)
        s_px = summarise(px) if len(px) else {"median": float("nan"), "p95": float("nan")}
        table.add_row(
            stage,
            f"{s_rot['median']:.3f}",
            f"{s_rot['mean']:.3f}",
            f"{s_rot['p95']:.3f}",
            f"{100 * np.mean(rot <= 0.25):.0f}%",
            f"{100 * np.mean(rot <= 1):.0f}%",
            f"{100 * np.mean(rot <= 2):.0f}%",
            f"{s_trans['median']:.2f}",
            f"{s_trans['mean']:.2f}",
            f"{s_trans['p95']:.2f}",
            f"{s_px['median']:.3f}",
            f"{s_px['p95']:.3f}",
        )
    CONSOLE.print(table)
    stages = list(dict.fromkeys(key[2:] for r in rows for key in r if key.startswith("t_")))  # a stage may be skipped
    stages = [s for s in stages if s != "total"] + ["total"]
    timing = "  ".join(f"{s} {np.mean([r.get(f't_{s}', 0.0) for r in rows]):.2f}" for s in stages)
    cpu = np.mean([r["cpu_s"] for r in rows])
    retried = sum(r["retried"] for r in rows)
    CONSOLE.print(
        f"seconds per query (wall, mean over {len(rows)}): {timing}; process CPU {cpu:.2f}; "
        f"max total {max(r['t_total'] for r in rows):.2f}; retried {retried}/{len(rows)}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/pad-synth"), help="pad-synth dataset root")
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="CLASS=CONFIG",
        help="config.yml of a trained omnipose-ad run per class (repeatable); CONFIG 'oracle' = exact ray caster",
    )
    parser.add_argument(
        "--oracle", action="append", default=[], metavar="CLASS", help="shorthand for --field CLASS=oracle"
    )
    parser.add_argument("--limit", type=int, default=0, help="at most this many queries per class (0 = all)")
    parser.add_argument("--every", type=int, default=1, help="use every n-th query (sorted by name)")
    parser.add_argument("--match", default="*", help="only queries whose path matches this pattern, e.g. 'test/good/*'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", action="store_true", help="also report the estimate after each refinement round")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write per-query rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fields = [f.split("=", 1) for f in args.field] + [(c, "oracle") for c in args.oracle]
    if not fields or any(len(f) != 2 for f in fields):
        parser.error("give at least one --field CLASS=CONFIG (or --oracle CLASS)")
    backbone = load_backbone()
    all_rows = []
    for class_name, field in fields:
        rows = run_class(resolve_class_dir(args.data / class_name), field, args, backbone)
        print_table(
            rows, f"{rows[0]['class']} ({'oracle renderer' if field == 'oracle' else field}), {len(rows)} queries"
        )
        all_rows += rows
    if len(fields) > 1:
        print_table(all_rows, f"all classes, {len(all_rows)} queries")
    defective = [r for r in all_rows if r["defective"]]
    if defective and len(defective) < len(all_rows):
        print_table(defective, f"defective queries only, {len(defective)}")
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))


if __name__ == "__main__":
    main()
