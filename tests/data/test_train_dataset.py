"""Training data: pairing, LR synthesis + cache, aligned crops, augmentation, the deterministic sampler."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lightsr.data.imresize import imresize
from lightsr.data.train_dataset import (
    DataError,
    SRTrainDataset,
    SRValDataset,
    TrainBatchSampler,
    augment,
    list_images,
)


def _smooth_image(rng, h, w):
    base = rng.random((h // 4 + 2, w // 4 + 2, 3))
    img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
    return (img * 255).round().astype(np.uint8)


@pytest.fixture
def hr_folder(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "hr"
    d.mkdir()
    sizes = [(40, 36), (33, 50), (48, 48), (12, 12)]  # the last one is smaller than the patch
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(_smooth_image(rng, h, w)).save(d / f"img{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture
def paired_folders(tmp_path):
    rng = np.random.default_rng(2)
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    hr.mkdir()
    lr.mkdir()
    for name in ("a", "b", "c"):
        img = _smooth_image(rng, 34, 38)  # not a multiple of 4: the unmatched GT is cropped
        Image.fromarray(img).save(hr / f"{name}.png")
        Image.fromarray(imresize(img[:32, :36], 0.25)).save(lr / f"{name}x4.png")
    return hr, lr


def test_list_images_skips_non_images(hr_folder):
    assert [p.name for p in list_images(hr_folder)] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    with pytest.raises(DataError, match="no such folder"):
        list_images(hr_folder / "missing")


def test_hr_only_dataset_matches_imresize_and_caches(hr_folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    ds = SRTrainDataset(hr_folder, scale=2, lq_size=8, cache_dir=cache, preload=False)
    assert len(ds.items) == 3  # 12x12 HR < 16x16 patch: skipped with a warning
    assert "smaller than the 16x16 HR patch" in caplog.text
    hr, lr = ds.pair(1)
    src = np.asarray(Image.open(hr_folder / "img1.png").convert("RGB"))
    assert hr.shape == (32, 50, 3)  # modcrop to the scale
    np.testing.assert_array_equal(lr, imresize(src[:32, :50], 0.5))
    cached = sorted((cache / "x2").glob("*.png"))
    assert len(cached) == 1 and cached[0].name.startswith("img1_")
    # a second dataset reads the cache (same pixels); a changed HR file gets a new cache entry
    ds2 = SRTrainDataset(hr_folder, scale=2, lq_size=8, cache_dir=cache, preload=True)
    np.testing.assert_array_equal(ds2.pair(1)[1], lr)
    assert len(list((cache / "x2").glob("*.png"))) == 3
    st = os.stat(hr_folder / "img1.png")
    os.utime(hr_folder / "img1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    SRTrainDataset(hr_folder, scale=2, lq_size=8, cache_dir=cache, preload=True)
    assert len(list((cache / "x2").glob("*.png"))) == 4
    assert not list((cache / "x2").glob(".*"))  # no temporary files left


def test_small_images_pad(hr_folder, tmp_path):
    ds = SRTrainDataset(hr_folder, scale=2, lq_size=8, cache_dir=tmp_path / "c", small_images="pad")
    assert len(ds.items) == 4
    hr, lr = ds.pair(3)
    assert lr.shape == (8, 8, 3) and hr.shape == (16, 16, 3)
    lq, gt = ds[(3, (0, 0, 0))]
    assert lq.shape == (3, 8, 8) and gt.shape == (3, 16, 16)


def test_paired_dataset_alignment(paired_folders):
    hr_dir, lr_dir = paired_folders
    ds = SRTrainDataset(hr_dir, lr_dir, scale=4, lq_size=4, filename_tmpl="{}x4", use_hflip=False, use_rot=False)
    hr, lr = ds.pair(0)
    assert hr.shape == (32, 36, 3) and lr.shape == (8, 9, 3)  # GT cropped to 4x the LR size
    for seed in range(20):
        lq, gt = ds[(0, (seed, 0, 0))]
        # the LR crop must be the bicubic downscale of the HR crop (crops are aligned to the grid)
        gt_u8 = (gt.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        lq_u8 = (lq.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        # locate the crop in the LR image and check the HR crop is the matching region
        found = [(t, l) for t in range(lr.shape[0] - 3) for l in range(lr.shape[1] - 3)
                 if np.array_equal(lr[t:t + 4, l:l + 4], lq_u8)]
        assert any(np.array_equal(hr[4 * t:4 * t + 16, 4 * l:4 * l + 16], gt_u8) for t, l in found)


def test_paired_dataset_missing_lr(paired_folders):
    hr_dir, lr_dir = paired_folders
    with pytest.raises(DataError, match=r"no LR image for 3 of 3 .*expected 'ax2\.\*'"):
        SRTrainDataset(hr_dir, lr_dir, scale=4, lq_size=4, filename_tmpl="{}x2")


def test_augment_is_consistent_and_covers_dihedral_group(paired_folders):
    hr_dir, lr_dir = paired_folders
    ds = SRTrainDataset(hr_dir, lr_dir, scale=4, lq_size=8, filename_tmpl="{}x4")
    seen = set()
    for seed in range(64):
        key = (0, (seed, 0, 0))
        lq, gt = ds[key]
        lq2, gt2 = ds[key]
        assert torch.equal(lq, lq2) and torch.equal(gt, gt2)  # same seed, same sample
        # the HR patch downscaled must match the LR patch (flips/transposes applied to both alike)
        down = imresize(gt.permute(1, 2, 0).double().numpy(), 0.25)
        seen.add(tuple(lq[:, 0, 0].tolist()) + tuple(lq[:, -1, -1].tolist()) + tuple(lq[:, 0, -1].tolist()))
        # interior pixels only (borders of a crop see different neighbours than in the full image)
        assert np.abs(down[2:-2, 2:-2] - lq.permute(1, 2, 0).numpy()[2:-2, 2:-2]).max() < 0.02
    assert len(seen) > 1
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    variants = {augment([img], h, v, t)[0].tobytes() + bytes(augment([img], h, v, t)[0].shape)
                for h in (0, 1) for v in (0, 1) for t in (0, 1)}
    assert len(variants) == 8


def test_sampler_is_a_function_of_the_iteration():
    s = TrainBatchSampler(10, 3, seed=5)
    stream = iter(s)
    first = [next(stream) for _ in range(7)]
    assert s.batches_per_epoch == 3  # 10 // 3, last incomplete batch dropped
    resumed = TrainBatchSampler(10, 3, seed=5, start_iter=4)
    assert next(iter(resumed)) == first[4]
    epoch0 = [k for b in first[:3] for k, _ in b]
    assert len(set(epoch0)) == 9  # a permutation: no repeats within an epoch
    assert [k for k, _ in first[3]] != [k for k, _ in first[0]]  # reshuffled per epoch
    assert all(seed[:2] == (5, 1) for _, seed in first[3])  # per-sample seeds carry (seed, epoch, position)


def test_sampler_shards_the_global_batch():
    single = TrainBatchSampler(20, 4, seed=1)
    r0 = TrainBatchSampler(20, 2, world_size=2, rank=0, seed=1)
    r1 = TrainBatchSampler(20, 2, world_size=2, rank=1, seed=1)
    for it in range(12):
        assert r0.batch_at(it) + r1.batch_at(it) == single.batch_at(it)
    with pytest.raises(DataError, match="raise dataset_enlarge_ratio"):
        TrainBatchSampler(3, 2, world_size=2)


def test_enlarge_ratio_and_dataloader_workers_give_the_same_batches(hr_folder, tmp_path):
    from torch.utils.data import DataLoader

    from lightsr.data.train_dataset import worker_init

    ds = SRTrainDataset(hr_folder, scale=2, lq_size=8, cache_dir=tmp_path / "c", enlarge_ratio=4)
    assert len(ds) == 12
    batches = {}
    for workers in (0, 2):
        sampler = TrainBatchSampler(len(ds), 3, seed=0, start_iter=2)
        kw = dict(worker_init_fn=worker_init, multiprocessing_context="fork") if workers else {}
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, **kw)
        it = iter(loader)
        batches[workers] = [next(it) for _ in range(5)]
        del it
    for (a_lq, a_gt), (b_lq, b_gt) in zip(batches[0], batches[2]):
        assert torch.equal(a_lq, b_lq) and torch.equal(a_gt, b_gt)


def test_val_dataset(paired_folders, hr_folder, tmp_path):
    hr_dir, lr_dir = paired_folders
    val = SRValDataset(hr_dir, lr_dir, scale=4, filename_tmpl="{}x4")
    name, lq, gt = val[0]
    assert name == "a" and lq.shape == (8, 9, 3) and gt.shape == (32, 36, 3)
    val2 = SRValDataset(hr_folder, scale=2, cache_dir=tmp_path / "c")
    name, lq, gt = val2[1]
    assert gt.shape == (32, 50, 3) and lq.shape == (16, 25, 3)


def test_meta_info_file_selects_files_and_gives_sizes(hr_folder, tmp_path, monkeypatch):
    import lightsr.data.train_dataset as td

    meta = tmp_path / "meta.txt"
    meta.write_text("img2.png (48,48,3)\nimg0.png (40,36,3)\n")
    calls = []
    monkeypatch.setattr(td, "image_size", lambda p: calls.append(p) or (0, 0))
    ds = SRTrainDataset(hr_folder, scale=2, lq_size=8, meta_info_file=str(meta), cache_dir=tmp_path / "c", preload=False)
    assert [it.gt.name for it in ds.items] == ["img2.png", "img0.png"] and not calls  # no header reads
    meta.write_text("img9.png (48,48,3)\n")
    with pytest.raises(DataError, match="1 listed files missing"):
        SRTrainDataset(hr_folder, scale=2, lq_size=8, meta_info_file=str(meta))
