"""Poisons: ε and pixel-range guarantees, hashing, atomic save, verified load, the cache."""

import pytest
import torch

from uebench.data import add_noise_uint8
from uebench.errors import UebenchError
from uebench.poison import Poison
from uebench.storage.cache import PoisonCache


def _poison(eps=8 / 255, n=6, classes=3):
    generator = torch.Generator().manual_seed(0)
    delta = (torch.rand(classes, 3, 4, 4, generator=generator) * 2 - 1) * eps
    return Poison(delta, torch.arange(n) % classes, eps, {"form": "class"})


def test_apply_respects_eps_and_range_and_keeps_negative_noise():
    x = torch.tensor([0, 3, 128, 250, 255], dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    x = x.contiguous()
    delta = torch.full((1, 3, 4, 4), -8 / 255)
    out = Poison(delta, torch.zeros(5, dtype=torch.long), 8 / 255).apply(x)
    assert out.dtype == torch.uint8
    assert (out.int() - x.int()).abs().max() <= 8
    assert out[2, 0, 0, 0] == 120  # negative noise is kept, not dropped
    assert out[0, 0, 0, 0] == 0  # clipped to the valid range


def test_rounding_never_leaves_a_fractional_eps_ball():
    x = torch.full((4, 1, 2, 2), 100, dtype=torch.uint8)
    noisy = add_noise_uint8(x, torch.full((4, 1, 2, 2), 0.03), eps=0.03)  # 7.65 levels
    assert (noisy.int() - 100).max() == 7


def test_rows_minus_one_leave_images_clean():
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    poison = Poison(torch.full((1, 3, 4, 4), 8 / 255), torch.tensor([0, -1, 0, -1]), 8 / 255)
    out = poison.apply(x)
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])
    assert not torch.equal(out[0], x[0])


def test_wrong_shapes_and_eps_are_one_line_errors():
    with pytest.raises(UebenchError, match="beyond the budget L∞ ≤ 8/255"):
        Poison(torch.ones(1, 3, 4, 4), torch.zeros(2, dtype=torch.long), 8 / 255)
    poison = _poison()
    with pytest.raises(UebenchError, match="made for 6 training images"):
        poison.apply(torch.zeros(5, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(UebenchError, match="noise has shape"):
        poison.apply(torch.zeros(6, 3, 5, 5, dtype=torch.uint8))


def test_save_load_roundtrip_and_corruption_detected(tmp_path):
    poison = _poison()
    path = tmp_path / "p.pt"
    poison.save(path)
    loaded = Poison.load(path)
    assert loaded.content_hash() == poison.content_hash()
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind

    payload = torch.load(path, weights_only=True)
    payload["delta"][0, 0, 0, 0] = 0.0
    torch.save(payload, path)
    with pytest.raises(UebenchError, match="content hash mismatch"):
        Poison.load(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(UebenchError, match="corrupt"):
        Poison.load(path)


def test_cache_hits_on_second_use_and_reports_corruption(tmp_path):
    cache = PoisonCache(tmp_path)
    calls = []

    def craft():
        calls.append(1)
        return _poison()

    first = cache.get_or_craft("k", craft)
    second = cache.get_or_craft("k", craft)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert first.content_hash() == second.content_hash()
    cache.path("k").write_bytes(b"\x00" * 10)
    with pytest.raises(UebenchError, match="delete it to recompute"):
        cache.get_or_craft("k", craft)


def test_concurrent_requests_for_one_poison_craft_it_once(tmp_path):
    import threading
    import time

    calls = []

    def slow_craft():
        calls.append(1)
        time.sleep(0.5)  # long enough for the second request to arrive while crafting
        return _poison()

    results = []
    workers = [
        threading.Thread(
            target=lambda: results.append(PoisonCache(tmp_path).get_or_craft("k", slow_craft))
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
        time.sleep(0.1)
    for worker in workers:
        worker.join()
    assert len(calls) == 1
    assert [p.content_hash() for p in results] == [results[0].content_hash()] * 2


def test_the_same_config_crafts_the_same_poison_hash():
    import uebench

    data = uebench.load("digits:size=8", train_size=100, test_size=50)
    spec = "emax:source=[smallcnn:width=4]:source_epochs=1"
    first, second = (uebench.craft(spec, data, device="cpu") for _ in range(2))
    assert first.meta["craft_seconds"] != second.meta["craft_seconds"]  # timing is recorded
    assert first.content_hash() == second.content_hash()
