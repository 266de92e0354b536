"""Field speed and quality side by side: stock nerfacto, `omnipose-ad` with its vm field, or with its hash field.

The methods train through nerfstudio's own Trainer on the same `pad-synth` class (generated if missing), on the
same machine, one after the other, for the same wall-clock budget or (``--steps``) the same number of steps.
Reported for each: held-out PSNR/SSIM on the defect-free test views at their true poses (views never used for
training), training steps/s and rays/s, render rays/s and the seconds for one 224x224 image, and the ratios
between the first two methods.

    python benchmarks/field_speed.py --data data/pad-synth --class-name gorilla --budget 600
    python benchmarks/field_speed.py --methods omnipose-ad,omnipose-ad-hash --steps 1000   # vm vs hash field
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from rich.console import Console
from rich.table import Table
from torchmetrics.functional.image import structural_similarity_index_measure

from pad_nerfstudio.data.mad_dataparser import MADDataParserConfig
from pad_nerfstudio.data.mad_dataset import load_rgb
from pad_nerfstudio.data.mad_layout import read_true_poses, resolve_class_dir

CONSOLE = Console()


def offline_nerfacto():
    """Stock nerfacto, except that its LPIPS metric (which downloads AlexNet weights) is stubbed out."""
    import nerfstudio.models.nerfacto as nerfacto
    import torchmetrics.image.lpip as lpip
    from nerfstudio.configs.method_configs import method_configs

    class NoLPIPS(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, *args):
            return torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = NoLPIPS
    nerfacto.LearnedPerceptualImagePatchSimilarity = NoLPIPS
    return copy.deepcopy(method_configs["nerfacto"])


def hash_field(config):
    """`omnipose-ad` with the hash-grid field instead of the vm one (everything else equal)."""
    config.pipeline.model.encoding = "hash"
    return config


def train_for(config, class_dir: Path, budget: float, output_dir: Path, steps: int | None = None):
    """Train through nerfstudio's Trainer until the wall-clock budget is spent (or for ``steps`` steps)."""
    config.pipeline.datamanager.dataparser = MADDataParserConfig(data=class_dir)
    config.machine.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.max_num_iterations = 1_000_000
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    step, start = 0, time.perf_counter()
    if steps is not None:  # the learning rates decay over the steps actually trained
        for group in config.optimizers.values():
            group["scheduler"].max_steps = steps
    while (time.perf_counter() - start < budget) if steps is None else (step < steps):
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        step += 1
    seconds = time.perf_counter() - start
    rays = config.pipeline.datamanager.train_num_rays_per_batch
    return trainer.pipeline, step, seconds, rays


def camera_for(pose: torch.Tensor, template: Cameras, size: int) -> Cameras:
    scale = size / int(template.width[0])
    return Cameras(
        camera_to_worlds=pose[None, :3].float(),
        fx=template.fx[:1] * scale,
        fy=template.fy[:1] * scale,
        cx=template.cx[:1] * scale,
        cy=template.cy[:1] * scale,
        width=torch.tensor([[size]]),
        height=torch.tensor([[size]]),
    )


@torch.no_grad()
def evaluate(pipeline, class_dir: Path, views: int) -> dict:
    pipeline.eval()
    model = pipeline.model
    template = pipeline.datamanager.train_dataset.cameras
    poses = read_true_poses(class_dir)
    if not poses:
        raise SystemExit(f"{class_dir} has no test_poses.json: held-out views need pad-synth's true query poses")
    # The test images themselves (test_poses.json's keys may lack the extension; `poses` takes either).
    good = sorted((class_dir / "test" / "good").iterdir(), key=lambda path: int(path.stem))
    names = [str(path.relative_to(class_dir)) for path in good][:views]
    psnr, ssim = [], []
    for name in names:
        truth = torch.from_numpy(load_rgb(class_dir / name)).float() / 255.0
        camera = camera_for(torch.from_numpy(poses[name]).float(), template, truth.shape[0]).to(model.device)
        rgb = model.get_outputs_for_camera(camera)["rgb"].cpu().clamp(0, 1)
        psnr.append(-10 * math.log10(float(((rgb - truth) ** 2).mean())))
        pair = (rgb.permute(2, 0, 1)[None], truth.permute(2, 0, 1)[None])
        ssim.append(float(structural_similarity_index_measure(*pair, data_range=1.0)))
    camera = camera_for(torch.from_numpy(poses[names[0]]).float(), template, 224).to(model.device)
    model.get_outputs_for_camera(camera)  # warm-up
    start = time.perf_counter()
    model.get_outputs_for_camera(camera)
    render_seconds = time.perf_counter() - start
    return {
        "psnr": sum(psnr) / len(psnr),
        "ssim": sum(ssim) / len(ssim),
        "render_224_s": render_seconds,
        "render_rays_per_s": 224 * 224 / render_seconds,
        "views": len(names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/pad-synth"))
    parser.add_argument("--class-name", default="gorilla")
    parser.add_argument("--size", type=int, default=200, help="image size when the class must be generated")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per method")
    parser.add_argument("--eval-views", type=int, default=5, help="held-out views rendered per method")
    parser.add_argument("--steps", type=int, help="train every method for this many steps instead of the budget")
    parser.add_argument(
        "--methods", default="nerfacto,omnipose-ad", help="from nerfacto, omnipose-ad, omnipose-ad-hash"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    try:
        class_dir = resolve_class_dir(args.data / args.class_name)
    except ValueError:
        from pad_nerfstudio.synth.generate import generate_dataset

        class_dir = generate_dataset(args.data, classes=[args.class_name], size=args.size)[0]
    from pad_nerfstudio.method_configs import omnipose_ad

    configs = {
        "nerfacto": offline_nerfacto,
        "omnipose-ad": lambda: copy.deepcopy(omnipose_ad.config),
        "omnipose-ad-hash": lambda: hash_field(copy.deepcopy(omnipose_ad.config)),
    }
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.methods.split(","):
            CONSOLE.rule(f"{name}: training for {f'{args.steps} steps' if args.steps else f'{args.budget:.0f} s'}")
            torch.manual_seed(0)
            pipeline, steps, seconds, rays = train_for(
                configs[name](), class_dir, args.budget, Path(scratch), args.steps
            )
            figures = evaluate(pipeline, class_dir, args.eval_views)
            figures.update(steps=steps, steps_per_s=steps / seconds, train_rays_per_s=steps * rays / seconds)
            results[name] = figures
            CONSOLE.print(name, figures)

    training = f"{args.steps} steps" if args.steps else f"{args.budget:.0f} s"
    table = Table(
        title=f"Field benchmark on {class_dir.name} ({training} of training each, "
        f"{torch.get_num_threads()} CPU threads, {'CUDA' if torch.cuda.is_available() else 'CPU'})"
    )
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    if len(results) == 2:
        table.add_column("ratio (2nd / 1st)", justify="right")
    rows = [
        ("held-out PSNR (dB)", "psnr", "{:.2f}"),
        ("held-out SSIM", "ssim", "{:.4f}"),
        ("training steps", "steps", "{:d}"),
        ("training steps/s", "steps_per_s", "{:.2f}"),
        ("training rays/s", "train_rays_per_s", "{:.0f}"),
        ("render rays/s", "render_rays_per_s", "{:.0f}"),
        ("render 224x224 (s)", "render_224_s", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        values = [results[n][key] for n in results]
        cells = [fmt.format(v) for v in values]
        if len(values) == 2:
            cells.append(f"{values[1] / values[0]:.2f}x" if values[0] else "-")
        table.add_row(label, *cells)
    CONSOLE.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
