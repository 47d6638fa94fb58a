"""The shared row cache (kicl.row_cache) and the sentence-embedding cache built on it (kicl.data.encoders)."""

import numpy as np
import pytest

from kicl.row_cache import RowCache


def _rows(keys):
    return np.array([[float(len(k)), float(sum(map(ord, k)))] for k in keys], dtype=np.float32)


def test_get_computes_only_missing_rows_and_shares_them_between_instances(tmp_path):
    calls = []

    def compute(keys):
        calls.append(list(keys))
        return _rows(keys)

    first = RowCache(tmp_path / "c", {"what": "test"})
    out = first.get(["a", "bb", "a"], compute)
    assert calls == [["a", "bb"]] and np.array_equal(out, _rows(["a", "bb", "a"]))
    second = RowCache(tmp_path / "c")  # another job: sees the first one's shard
    out = second.get(["bb", "ccc"], compute)
    assert calls[-1] == ["ccc"] and np.array_equal(out, _rows(["bb", "ccc"]))
    assert (tmp_path / "c" / "key.json").read_text().strip().startswith("{")


def test_a_truncated_shard_is_ignored_and_recomputed(tmp_path):
    cache = RowCache(tmp_path / "c")
    cache.add(["x", "y"], _rows(["x", "y"]))
    shard = next((tmp_path / "c").glob("part-*.npy"))
    shard.write_bytes(shard.read_bytes()[:-8])  # a job killed while writing
    fresh = RowCache(tmp_path / "c")
    assert fresh.missing(["x", "y"]) == ["x", "y"]
    assert np.array_equal(fresh.get(["y"], _rows), _rows(["y"]))
    with pytest.raises(ValueError, match="2 keys for rows of shape"):
        fresh.add(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(KeyError, match="no row for key zzz"):
        fresh.rows(["zzz"])


def test_encoder_cache_equals_fresh_embeddings_and_skips_the_encoder(tiny_encoder, tmp_path, monkeypatch):
    import kicl.data.encoders as encoders

    texts = ["good movie", "bad plot twist", "good movie"]
    fresh = encoders.encode_texts(tiny_encoder, texts)
    cached = encoders.encode_texts(tiny_encoder, texts, cache=tmp_path / "emb")
    assert np.allclose(fresh, cached, atol=1e-6)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded although every text is cached")

    monkeypatch.setattr(encoders, "load_encoder", no_encoder)
    again = encoders.encode_texts(tiny_encoder, texts[:2], cache=tmp_path / "emb")
    assert np.array_equal(again, cached[:2])
    with pytest.raises(AssertionError, match="the encoder was loaded"):
        encoders.encode_texts(tiny_encoder, ["an unseen text"], cache=tmp_path / "emb")
