"""Bad files and requests get one clear message naming what is wrong, and nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.interop import InteropError
from npvit.interop.timm_names import to_timm

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed: pip install "
                                                                    "'npvit[interop]'")


def timm_state(arch: str = "vit_tiny_patch16_224", depth: int = 1, image_size: int = 32, **kwargs) -> dict:
    """timm's names and layouts of an npvit timm-arrangement model (no timm needed)."""
    cfg = dataclasses.replace(npvit.ViTConfig.timm(arch, image_size=image_size, **kwargs), depth=depth)
    return to_timm({n: np.asarray(p) for n, p in npvit.ViT(cfg).params.items()}, cfg)


def save(tmp_path: Path, state: dict, name: str = "model.safetensors") -> Path:
    safetensors_numpy.save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()},
                                str(tmp_path / name))
    return tmp_path / name


class Payload:
    """Unpickling this would write a file: proof that nothing was unpickled if the file never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.mark.parametrize("suffix", [".bin", ".pth", ".pt"])
def test_torch_pickles_are_refused_unread(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(InteropError, match="pickle file.*never unpickles it.*safetensors"):
        npvit.load_timm(path, "vit_tiny_patch16_224")
    assert not marker.exists()


def test_a_pickle_renamed_safetensors_or_npz_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    (tmp_path / "a.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(InteropError, match="cannot be read as safetensors"):
        npvit.load_timm(tmp_path / "a.safetensors", "vit_tiny_patch16_224")
    np.savez(tmp_path / "b.npz", x=np.array([Payload(marker)], dtype=object))
    with pytest.raises(InteropError, match="only a pickle can read; npvit never unpickles"):
        npvit.load_timm(tmp_path / "b.npz", "vit_tiny_patch16_224")
    assert not marker.exists()


def test_a_torch_zip_save_named_safetensors_says_what_it_is(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    torch.save({"patch_embed.proj.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(InteropError, match="zip archive: a PyTorch save"):
        npvit.load_timm(tmp_path / "model.safetensors", "vit_tiny_patch16_224")


def test_wrong_arch_names_the_ones_that_fit(tmp_path: Path) -> None:
    path = save(tmp_path, timm_state("vit_small_patch16_224"))
    with pytest.raises(InteropError, match=r"does not hold vit_tiny_patch16_224: its width 384 \(the arch has "
                                           r"192\); it fits vit_small_patch16_224 or vit_small_patch16_384"):
        npvit.load_timm(path, "vit_tiny_patch16_224")
    with pytest.raises(InteropError, match="unknown timm architecture 'vit_huge_patch14_224'"):
        npvit.load_timm(path, "vit_huge_patch14_224")


def test_missing_misshapen_and_foreign_entries(tmp_path: Path) -> None:
    state = timm_state()
    del state["blocks.0.mlp.fc2.bias"]
    with pytest.raises(InteropError, match="missing 1 entry the model needs: blocks.0.mlp.fc2.bias"):
        npvit.load_timm(save(tmp_path, state), "vit_tiny_patch16_224")
    state = timm_state()
    state["blocks.0.attn.qkv.bias"] = np.zeros(5)
    with pytest.raises(InteropError, match=r"'blocks.0.attn.qkv.bias' has shape \(5,\), the model needs \(576,\)"):
        npvit.load_timm(save(tmp_path, state), "vit_tiny_patch16_224")
    state = timm_state()
    state["blocks.0.ls1.gamma"] = np.ones(192)
    with pytest.raises(InteropError, match="layer scale .* not one of the plain ViT architectures"):
        npvit.load_timm(save(tmp_path, state), "vit_tiny_patch16_224")
    state = timm_state()
    state["pos_embed"] = state["pos_embed"][:, :4]  # 3 patch positions
    with pytest.raises(InteropError, match="3 patch positions, not a square grid"):
        npvit.load_timm(save(tmp_path, state), "vit_tiny_patch16_224")


def test_what_the_file_cannot_give_must_be_asked(tmp_path: Path) -> None:
    state = timm_state()
    del state["head.weight"], state["head.bias"]
    path = save(tmp_path, state)
    with pytest.raises(InteropError, match="no classifier head: pass num_classes="):
        npvit.load_timm(path, "vit_tiny_patch16_224")
    assert npvit.load_timm(path, "vit_tiny_patch16_224", num_classes=7).config.num_classes == 7
    avg = save(tmp_path, timm_state(global_pool="avg", class_token=False), "avg.safetensors")
    with pytest.raises(InteropError, match="no class token .*global_pool='avg'"):
        npvit.load_timm(avg, "vit_tiny_patch16_224")
    with pytest.raises(InteropError, match="which timm architecture"):
        npvit.load_timm(avg, None, global_pool="avg")


def test_not_a_vit_and_no_file(tmp_path: Path) -> None:
    path = save(tmp_path, {"conv1.weight": np.zeros((2, 2))})
    with pytest.raises(InteropError, match="neither timm's 'patch_embed.proj.weight' nor Google's"):
        npvit.load_timm(path, "vit_tiny_patch16_224")
    with pytest.raises(InteropError, match="no such file"):
        npvit.load_timm(tmp_path / "absent.safetensors", "vit_tiny_patch16_224")
    np.savez(tmp_path / "bv.npz", **{"params/embedding/kernel": np.zeros(1)})
    with pytest.raises(InteropError, match="big_vision"):
        npvit.load_timm(tmp_path / "bv.npz", "vit_tiny_patch16_224")
    np.savez(tmp_path / "g.npz", **{"embedding/kernel": np.zeros((16, 16, 3, 192)), "embedding/bias": np.zeros(192)})
    with pytest.raises(InteropError, match="missing 'Transformer/posembed_input/pos_embedding'"):
        npvit.load_timm(tmp_path / "g.npz", "vit_tiny_patch16_224")


def test_npvit_load_says_it_as_a_checkpoint_error(tmp_path: Path) -> None:
    from npvit.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="pickle file"):
        npvit.load(tmp_path / "model.bin", arch="vit_tiny_patch16_224")
    path = save(tmp_path, timm_state())
    with pytest.raises(CheckpointError, match="not written by npvit.export .*--arch"):
        npvit.load(path)
