"""Sharded streaming data: packing (parallel, resumable, bad images left out), the streaming order, and
training pairs from shards equal to the ones folders give."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.shard_format import MANIFEST
from datamodules.shard_sampling import ShardBatchSampler, StreamOrder
from lit_sr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def make_images(folder: Path, n: int, seed: int = 0, low: int = 40, high: int = 72) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(low, high, 2))
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def pack_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_sr.pack", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=timeout)


def shard_keys(root: Path) -> list[str]:
    from datamodules.shard_format import Sample, open_reader

    reader, total = open_reader(str(root))
    return [Sample.from_item(reader[i]).key for i in range(total)]


# ------------------------------------------------------------------------------ packing


def test_pack_keeps_every_usable_image_in_order_and_leaves_out_bad_ones_with_a_count(tmp_path):
    files = make_images(tmp_path / "photos", 12)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (20, 90)).save(tmp_path / "photos" / "thin.png")  # below min_size
    proc = pack_cli(f"input_dirs=[{tmp_path / 'photos'}]", f"output_dir={tmp_path / 'set'}", "workers=2",
                    "part_size=5", "chunk_bytes=20kb", "min_size=32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shard set: 12 samples" in proc.stdout and "2 images left out" in proc.stdout
    manifest = json.loads((tmp_path / "set" / MANIFEST).read_text())
    assert manifest["samples"] == 12 and manifest["skipped"] == 2 and manifest["sources"] == ["photos"]
    assert shard_keys(tmp_path / "set") == [f"photos/{p.name}" for p in files]  # sorted, as folders list them
    from litdata import StreamingDataset

    from datamodules.shard_format import Sample

    sample = Sample.from_item(StreamingDataset(str(tmp_path / "set"))[3])
    assert sample.image == files[3].read_bytes()  # stored as the file was: no re-encoding
    assert not (tmp_path / "set" / ".pack").exists()


def test_a_killed_pack_resumes_and_gives_the_same_set_as_an_uninterrupted_one(tmp_path):
    make_images(tmp_path / "photos", 40, low=200, high=260)  # slow enough to be killed half-way
    common = [f"input_dirs=[{tmp_path / 'photos'}]", "workers=1", "part_size=4", "chunk_bytes=200kb"]
    assert pack_cli(*common, f"output_dir={tmp_path / 'straight'}").returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lit_sr.pack", *common, f"output_dir={killed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list((killed / ".pack").glob("part-*.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the pack ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the packer and its workers, mid-part
    proc.wait()
    done_before = len(list((killed / ".pack").glob("part-*.json")))
    assert done_before < 10 and not (killed / "index.json").exists()
    with pytest.raises(ConfigError, match="not a packed shard set .*interrupted pack"):
        from datamodules.shard_format import read_manifest

        read_manifest(str(killed))
    again = pack_cli(*common, f"output_dir={killed}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"({10 - done_before} written now)" in again.stdout
    assert shard_keys(killed) == shard_keys(tmp_path / "straight")
    a = json.loads((tmp_path / "straight" / "index.json").read_text())["chunks"]
    b = json.loads((killed / "index.json").read_text())["chunks"]
    assert [c["filename"] for c in a] == [c["filename"] for c in b]
    assert all((tmp_path / "straight" / c["filename"]).read_bytes() == (killed / c["filename"]).read_bytes() for c in a)


def test_pack_refuses_bad_input_with_one_line(tmp_path):
    make_images(tmp_path / "a" / "photos", 2)
    make_images(tmp_path / "b" / "photos", 2)
    cases = [([f"input_dirs=[{tmp_path / 'nope'}]", f"output_dir={tmp_path / 'x'}"], "input_dirs: folder not found"),
             ([f"input_dirs=[{tmp_path / 'a' / 'photos'},{tmp_path / 'b' / 'photos'}]", f"output_dir={tmp_path / 'x'}"],
              "share the folder name"),
             ([f"output_dir={tmp_path / 'x'}"], "input_dirs is missing"),
             ([f"input_dirs=[{tmp_path / 'a'}]", f"output_dir={tmp_path / 'b'}"], "is not empty")]
    for args, message in cases:
        proc = pack_cli(*args)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ------------------------------------------------------------------------------ the streaming order


def test_every_epoch_visits_each_sample_once_over_the_ranks_in_chunk_local_blocks():
    sizes = [16] * 12 + [7]  # 199 samples
    for world, batch in ((1, 4), (4, 2), (3, 5)):
        order = StreamOrder(sizes, seed=3, world_size=world, batch_size=batch)
        per_epoch = []
        for epoch in range(3):
            everything = order.epoch_order(epoch)
            assert sorted(everything.tolist()) == list(range(199))
            ranks = [order.rank_batches(epoch, r) for r in range(world)]
            drawn = np.concatenate([r.ravel() for r in ranks])
            assert len(set(drawn.tolist())) == len(drawn) == world * order.per_rank  # no sample twice
            assert 199 - len(drawn) < world * batch  # only a short tail waits for the next epoch
            chunks_read = [len(set((r.ravel() // 16).tolist())) for r in ranks]
            assert max(chunks_read) <= -(-len(sizes) // world) + 1  # a rank reads only its own few chunks
            per_epoch.append(everything)
        assert not np.array_equal(per_epoch[0], per_epoch[1])  # a new order every epoch
    assert np.array_equal(StreamOrder(sizes, 3).epoch_order(1), StreamOrder(sizes, 3, 4, 2).epoch_order(1))


class _Echo(torch.utils.data.Dataset):
    def __getitem__(self, key):
        return key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samplers_resume_mid_epoch_at_the_first_untrained_batch_with_any_number_of_workers(num_workers):
    from torch.utils.data import DataLoader

    from datamodules.sampling import EpochSampler

    for make, done in ((lambda: ShardBatchSampler(6), 4), (lambda: EpochSampler(12, seed=0), 8)):
        whole = make()
        whole.set_epoch(2)
        expected = list(whole)[done:]
        sampler = make()
        sampler.resume(epoch=2, done=done)  # batches (shards) or items (folders) of this rank's epoch
        sampler.set_epoch(2)  # Lightning, before the resumed epoch
        # A loader with workers starts by iterating its sampler twice: the resume point must survive that.
        seen = list(DataLoader(_Echo(), batch_size=None, sampler=sampler, num_workers=num_workers))
        assert [tuple(k) if isinstance(k, list) else int(k) for k in seen] == expected
        sampler.set_epoch(3)
        assert len(list(sampler)) == len(whole)  # the next epoch is whole


# ------------------------------------------------------------------------------ training pairs


def test_shard_pairs_equal_folder_pairs_for_the_same_draw(tmp_path, make_cfg):
    from datamodules.hr_folder import HRCropDataset
    from datamodules.packing import pack
    from lit_sr.config.build import build_datamodule

    files = make_images(tmp_path / "photos", 9)
    pack([str(tmp_path / "photos")], str(tmp_path / "set"), workers=0, part_size=4)
    cfg = make_cfg("data=shards", f"data.shards={tmp_path / 'set'}", "data.crop_size=32", "data.batch_size=3",
                   "degradation=realesrgan_x4plus", "data.num_workers=1")
    dm = build_datamodule(cfg)
    dm.check()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 3 and sorted(p for b in batches for p in b["path"]) == [f"photos/{f.name}" for f in files]
    folder = HRCropDataset(files, 32, epoch_size=9, seed=int(cfg.seed))
    for j, batch in enumerate(batches):
        for draw in batch["draw"].tolist():  # epoch 0: draw = sample id = the file's place in packing order
            assert torch.equal(folder[draw]["hq"], dm.train_set.samples.item(draw, 0)["hq"])
        again = dm.train_dataloader().dataset[(0, j)]  # the same key, in this process: the same pair
        assert torch.equal(again["lq"], batch["lq"]) and again["degradation"] == batch["degradation"]


def test_data_shards_on_a_folder_that_is_not_a_shard_set_is_one_line(tmp_path):
    make_images(tmp_path / "photos", 2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "train.py", "data=shards", f"data.shards={tmp_path / 'photos'}",
                           f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.shards: ") and "lit_sr.pack" in proc.stderr


# ------------------------------------------------------------------------------ TMG masks at scale


@pytest.mark.slow
def test_mask_extraction_over_a_shard_set_runs_on_two_ranks_resumes_after_a_kill_and_feeds_training(tmp_path):
    from datamodules.mask_cache import MaskCache
    from datamodules.packing import pack

    files = make_images(tmp_path / "photos", 16, low=64, high=96)
    tags = tmp_path / "tags.csv"
    tags.write_text("image,tags\n" + "".join(f'{p.name},"dog, grass"\n' for p in files))
    pack([str(tmp_path / "photos")], str(tmp_path / "set"), workers=0, part_size=8)
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "lit_sr.extract_masks", f"shards={tmp_path / 'set'}", f"cache_dir={cache}",
            "tagger=file", f"tagger.path={tags}", "grounding=tiny", "num_workers=0", "batch_size=1",
            "mask_max_side=32", "trainer.enable_progress_bar=false", "trainer.devices=2", "trainer.strategy=ddp",
            "trainer.accelerator=cpu"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while sum(len(j.read_text().splitlines()) for j in cache.glob("journal-*.jsonl")) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the extraction ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks, mid-job: their journals hold what they finished
    proc.wait()
    done = len(MaskCache(cache))
    assert 2 <= done < 16
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{done} already cached" in again.stdout and "16 entries" in again.stdout
    entries = MaskCache(cache).entries
    assert sorted(entries) == [f"photos/{p.name}" for p in files] and not list(cache.glob("journal-*"))
    # Training on the shards takes each sample's masks from that cache (matched by key and SHA-1).
    from datamodules.shard_dataset import ShardSamples

    samples = ShardSamples(str(tmp_path / "set"), 32, tmg=True, mask_cache=str(cache), max_nouns=4)
    item = samples.item(3, epoch=0)
    assert item["prompt"] == "dog, grass" and item["nouns"] == entries["photos/0003.png"].nouns
    assert item["masks"].shape == (4, 32, 32)


def test_packed_prompts_and_masks_give_the_crops_the_same_tmg_fields_as_folders(tmp_path):
    from datamodules.hr_folder import HRCropDataset
    from datamodules.mask_cache import MaskCache, MaskCacheWarning, file_sha1, image_key
    from datamodules.packing import PackOptions, pack
    from datamodules.shard_dataset import ShardSamples
    from datamodules.tmg_dataset import wrap_with_masks

    files = make_images(tmp_path / "photos", 4)
    cache = MaskCache(tmp_path / "cache", create=True)
    rng = np.random.default_rng(1)
    for path in files[:3]:  # the fourth image has no entry: no nouns, its prompt from the prompt mapping
        h, w = np.asarray(Image.open(path)).shape[:2]
        cache.write(image_key(path, tmp_path / "photos"), file_sha1(path), "dog, grass", ["dog", "grass"],
                    rng.random((2, h // 2, w // 2)) > 0.5, (h, w), stat=os.stat(path))
    cache.merge_journals()
    pack([str(tmp_path / "photos")], str(tmp_path / "set"), workers=0,
         opts=PackOptions(mask_cache=str(tmp_path / "cache"), prompts={files[3].stem: "a cat"}))
    assert json.loads((tmp_path / "set" / MANIFEST).read_text())["masks"] is True
    shards = ShardSamples(str(tmp_path / "set"), 32, tmg=True, max_nouns=3)
    with pytest.warns(MaskCacheWarning, match="1 missing"):  # the fourth image, on purpose
        folders = wrap_with_masks(HRCropDataset(files, 32, epoch_size=4), str(tmp_path / "cache"), max_nouns=3)
    for i in range(3):
        a, b = folders[i], shards.item(i, epoch=0)
        assert a["crop"] == b["crop"] and a["prompt"] == b["prompt"] == "dog, grass" and a["nouns"] == b["nouns"]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["mask_valid"], b["mask_valid"])
    last = shards.item(3, epoch=0)
    assert last["prompt"] == "a cat" and last["nouns"] == [] and not last["mask_valid"].any()


def test_a_mid_epoch_resume_on_another_stream_layout_is_refused_with_one_line(tmp_path, make_cfg):
    from datamodules.packing import pack
    from lit_sr.config.build import build_datamodule

    make_images(tmp_path / "photos", 8)
    pack([str(tmp_path / "photos")], str(tmp_path / "set"), workers=0)
    dm = build_datamodule(make_cfg("data=shards", f"data.shards={tmp_path / 'set'}", "data.batch_size=2"))
    dm.setup("fit")
    saved = dm.identity()
    dm.load_state_dict({"stream": {**saved, "world_size": 4}, "epoch": 1, "batches_done": 1})
    dm._check_resume(epoch=1, done=0)  # at an epoch boundary any layout may resume
    with pytest.raises(ConfigError, match=r"mid-epoch 1 on another stream \(world_size 4 -> 1\)"):
        dm._check_resume(epoch=1, done=1)
    dm.load_state_dict({"stream": saved, "epoch": 1, "batches_done": 1})
    dm._check_resume(epoch=1, done=1)  # the same layout resumes
