"""The frozen feature extractor: offline ImageNet weights really load, and failures are quick and explained."""

import socket
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from pad_nerfstudio.anomaly import backbone as backbone_module
from pad_nerfstudio.anomaly.backbone import BackboneWeightsError, lite0_package_state_dict, load_backbone


@pytest.fixture(scope="module")
def extractor():
    return load_backbone()


def _photo(name: str) -> torch.Tensor:
    data = pytest.importorskip("skimage.data")  # scikit-image ships a few photos; it is a nerfstudio dependency
    image = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float() / 255
    side = min(image.shape[-2:])
    return F.interpolate(image[..., :side, :side], size=(224, 224), mode="bilinear", antialias=True)


def test_offline_backbone_structure(extractor):
    assert extractor.channels == [24, 40, 112]
    assert extractor.strides == [4, 8, 16]
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()  # a training pipeline toggling modes must not unfreeze BatchNorm statistics
    assert not extractor.training
    features = extractor(torch.rand(2, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [(2, 24, 56, 56), (2, 40, 28, 28), (2, 112, 14, 14)]


def test_loaded_tensors_are_the_package_weights(extractor):
    package = [v for k, v in lite0_package_state_dict().items() if not k.endswith("num_batches_tracked")]
    loaded = [v for k, v in extractor.model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) > 100
    for ours, theirs in zip(loaded, package, strict=False):  # the extractor uses the leading tensors only
        assert torch.equal(ours, theirs)
    random_init = load_backbone(weights="none")
    first_conv = next(iter(random_init.model.state_dict().values()))
    assert not torch.allclose(first_conv, loaded[0])


def test_weights_classify_a_photo_like_imagenet(extractor):
    # The strongest evidence that weights *and* input normalisation are right: the full network, fed the same
    # normalisation as the extractor, recognises scikit-image's cat photo as one of ImageNet's cats (281-285).
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    backbone_module._load_into(classifier, lite0_package_state_dict(), "package")
    with torch.no_grad():
        logits = classifier((_photo("chelsea") - extractor.mean) / extractor.std)
    assert int(logits.argmax()) in range(281, 286)


def test_features_tell_images_apart(extractor):
    cat, coffee = _photo("chelsea"), _photo("coffee")
    with torch.no_grad():
        a, b, a_again = extractor(cat), extractor(coffee), extractor(cat.clone())
    for fa, fb, fa2 in zip(a, b, a_again, strict=True):
        assert torch.equal(fa, fa2)
        relative = (fa - fb).norm() / fa.norm()
        assert relative > 0.3
        assert fa.abs().mean() > 0.01  # not dead (all-zero) features


def test_weights_file_round_trip(tmp_path, extractor):
    path = tmp_path / "lite0.pth"
    torch.save(extractor.model.state_dict(), path)
    reloaded = load_backbone(weights=str(path))
    image = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for fa, fb in zip(extractor(image), reloaded(image), strict=True):
            assert torch.equal(fa, fb)


def test_missing_weights_file_is_explained(tmp_path):
    missing = tmp_path / "efficientnet_b4.pth"
    with pytest.raises(BackboneWeightsError, match="does not exist") as info:
        load_backbone("tf_efficientnet_lite0", weights=str(missing))
    assert str(missing) in str(info.value) and "Download" in str(info.value)


def test_wrong_architecture_weights_are_explained(tmp_path):
    state = lite0_package_state_dict()
    first = next(iter(state))
    state[first] = torch.zeros(16, 3, 3, 3)  # a stem with the wrong width
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError, match="does not match the model layer by layer"):
        load_backbone(weights=str(path))


def _fail_if_downloading(*args, **kwargs):
    if kwargs.get("pretrained"):
        raise AssertionError("tried to download although offline")
    return _real_create_model(*args, **kwargs)


_real_create_model = timm.create_model


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(timm, "create_model", _fail_if_downloading)  # backbone imports timm when it builds
    yield
    torch.hub.set_dir(hub_dir)


def test_offline_flag_fails_fast(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match="not reachable") as info:
        load_backbone("efficientnet_b4", weights="hub")
    assert time.perf_counter() - start < 5.0
    assert "weights='/path/to/weights.pth'" in str(info.value)


def test_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TIMM_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    timeouts = []

    def no_network(address, timeout=None, *args, **kwargs):
        timeouts.append(timeout)
        raise socket.timeout("simulated offline machine")

    monkeypatch.setattr(backbone_module.socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match="not reachable"):
        load_backbone("efficientnet_b4")  # "auto" means hub weights for models other than the offline Lite0
    assert time.perf_counter() - start < 5.0
    assert timeouts and all(t is not None and t <= 2.0 for t in timeouts)
