"""One-shot GPU check (issue #15): `omnipose-ad`'s GPU preset on one 400 px pad-synth class, vm and hash fields.

Run it through `benchmarks/gpu_check.sh`, which first installs what it can. Prints what the machine offers (GPU,
tiny-cuda-nn, faiss on the GPU), then for each field encoding: training steps and seconds, seconds per step and
the projection to the preset's full step count, seconds per query, image and pixel AUROC, AUPRO and the query pose
error, with the GPU targets beside them (train <= 60 s, <= 0.3 s per query at 400 px). For the hash field it also
checks pose gradients through the implementation in use (tiny-cuda-nn's input gradients when it is installed)
against central finite differences. The whole check is sized for 8 minutes on one GPU: ``--steps`` trains fewer
steps than the preset's and the table says how many.

    bash benchmarks/gpu_check.sh                                # on a CUDA machine
    python benchmarks/gpu_check.py --allow-cpu --size 64 --steps 30 --out /tmp/gpu-dry-run   # the code path, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from runs import IMAGE_AUROC_COLUMNS, evaluate_run, markdown_table, numeric, train_lite

CLASS_NAME = "01Gorilla"
TARGETS = {"train_seconds": 60.0, "seconds_per_query": 0.3}
"""The issue's GPU targets at 400 px."""
COLUMNS = {
    "implementation": ("grid implementation", "{}"),
    "steps": ("steps", "{:d}"),
    "train_seconds": ("train s", "{:.0f}"),
    "ms_per_step": ("ms / step (set-up included)", "{:.1f}"),
    "preset_train_seconds": ("projected preset train s", "{:.0f}"),
    "seconds_per_query": ("s / query", "{:.3f}"),
    **IMAGE_AUROC_COLUMNS,
    "pixel_auroc": ("pixel AUROC", "{:.4f}"),
    "pixel_aupro": ("AUPRO", "{:.3f}"),
    "pose_rot_err_deg_median": ("pose median °", "{:.3f}"),
    "pose_rot_err_deg_p95": ("pose p95 °", "{:.2f}"),
    "gradient_cosine": ("pose grad. cos vs FD", "{:.4f}"),
    "gradient_ratio": ("pose grad. norm / FD", "{:.3f}"),
}


def environment() -> Dict[str, Any]:
    """What the machine offers the pipeline."""
    from nerfstudio.utils.external import TCNN_EXISTS

    from pad_nerfstudio.pose.retrieval import faiss_gpu_available

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "tinycudann": TCNN_EXISTS,
        "faiss on the GPU": faiss_gpu_available(),
        "CPUs": os.cpu_count(),
    }


def pose_gradient_check(config_path: Path) -> Dict[str, float]:
    """Autograd's d(photometric loss)/d(pose correction) through the trained field against central differences,
    on a 48 x 48 grid of pixels of training view 0 seen from a pose slightly off its own."""
    from nerfstudio.utils.eval_utils import eval_setup

    from pad_nerfstudio.pose.se3 import apply_pose_correction

    _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    model, views = pipeline.model, pipeline.datamanager.train_dataset
    cameras = views.cameras
    device = model.device
    pose = cameras.camera_to_worlds[0].double().to(device)
    intrinsics = torch.cat([cameras.fx[0], cameras.fy[0], cameras.cx[0], cameras.cy[0]]).float().to(device)
    image = views.get_image_float32(0).to(device)
    height, width = image.shape[:2]
    u, v = torch.meshgrid(torch.linspace(0, width - 1, 48), torch.linspace(0, height - 1, 48), indexing="xy")
    pixels = torch.stack([u, v], -1).reshape(-1, 2).round().to(device)
    target = image[pixels[:, 1].long(), pixels[:, 0].long()]
    start = torch.tensor([0.01, -0.02, 0.01, 0.015, -0.01, 0.02], dtype=torch.float64, device=device)

    def loss(correction: torch.Tensor) -> torch.Tensor:
        camera = apply_pose_correction(pose, correction).float()
        return ((model.render_pixels(camera, intrinsics, pixels + 0.5)["rgb"] - target) ** 2).sum()

    correction = start.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(loss(correction), correction)
    numeric_gradient = torch.zeros_like(analytic)
    with torch.no_grad():
        for k in range(6):
            step = torch.zeros_like(start)
            step[k] = 1e-3
            numeric_gradient[k] = (loss(start + step) - loss(start - step)) / 2e-3
    return {
        "gradient_cosine": float(torch.nn.functional.cosine_similarity(analytic, numeric_gradient, dim=0)),
        "gradient_ratio": float(analytic.norm() / numeric_gradient.norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pad-gpu-check"), help="data, runs and results")
    parser.add_argument("--size", type=int, default=400, help="image size of the generated class")
    parser.add_argument("--steps", type=int, default=3000, help="training steps per encoding (the preset has more)")
    parser.add_argument("--encodings", default="vm,hash", help="comma-separated field encodings to train")
    parser.add_argument("--n-test-good", type=int, default=8)
    parser.add_argument("--n-test-defect", type=int, default=8)
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a dry run of the code path)")
    args = parser.parse_args()

    started = time.perf_counter()
    env = environment()
    print("environment:", json.dumps(env))
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("No CUDA device: this check is for a GPU machine (--allow-cpu runs it anyway).")
    from pad_nerfstudio.method_configs import omnipose_ad

    preset_steps = omnipose_ad.config.max_num_iterations
    data = args.out / f"data-{args.size}"
    if not (data / CLASS_NAME / "transforms.json").exists():
        command = [sys.executable, "-m", "pad_nerfstudio.synth.cli", "--out", str(data), "--classes", CLASS_NAME]
        command += ["--size", str(args.size), "--n-test-good", str(args.n_test_good)]
        command += ["--n-test-defect", str(args.n_test_defect), "--workers", str(min(8, os.cpu_count() or 1))]
        subprocess.run(command, check=True)
    print(f"data ready after {time.perf_counter() - started:.0f} s", flush=True)

    rows = []
    for encoding in args.encodings.split(","):

        def edit(config: Any, encoding: str = encoding) -> None:
            config.pipeline.model.encoding = encoding
            for group in config.optimizers.values():  # the learning rates decay over the steps actually trained
                group["scheduler"].max_steps = args.steps

        run_dir = args.out / "runs" / encoding
        config_path, train_seconds = train_lite(data / CLASS_NAME, run_dir, edit, args.steps, method="omnipose-ad")
        metrics = numeric(evaluate_run(config_path, run_dir / "report"))
        from pad_nerfstudio.field.hash_grid import resolve_implementation

        result: Dict[str, Any] = {
            **metrics,
            "implementation": resolve_implementation("auto") if encoding == "hash" else "grid_sample",
            "steps": args.steps,
            "train_seconds": train_seconds,
            "ms_per_step": 1000 * train_seconds / args.steps,
            "preset_train_seconds": train_seconds / args.steps * preset_steps,
        }
        if encoding == "hash":
            result.update(pose_gradient_check(config_path))
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        rows.append((encoding, result))
        print(f"{encoding} done after {time.perf_counter() - started:.0f} s", flush=True)

    table = markdown_table(rows, COLUMNS, first="encoding")
    device = env["cuda"] if env["cuda"] != "none" else f"CPU ({env['CPUs']} cores)"
    print(
        f"\n{CLASS_NAME} at {args.size} px, omnipose-ad GPU preset settings, {args.steps} of its {preset_steps} steps"
    )
    print(f"on {device}; tinycudann: {env['tinycudann']}; faiss on the GPU: {env['faiss on the GPU']}\n")
    print(table)
    for name, result in rows:
        verdicts = [
            f"{key} {result[key]:.2f} {'meets' if result[key] <= limit else 'misses'} <= {limit}"
            for key, limit in TARGETS.items()
        ]
        print(f"{name}: " + "; ".join(verdicts))
    print(f"check finished in {time.perf_counter() - started:.0f} s")
    (args.out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
