"""PanSt3R inputs: image preprocessing (sizes, crops, antialiased resize, portrait rotation) and text
embeddings (offline SigLIP-style model, disk cache, precomputed files, PanLift vocabulary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panst3r import text as T
from panst3r.preprocess import ALLOWED_SIZES_512, load_images, preprocess, target_size, to_original_orientation
from pipeline.common.classes import PANLIFT_CLASSES
from pipeline.common.io import InputError


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_native_size_is_only_normalised():
    rgb = _rgb(384, 512)
    x, info = preprocess(rgb)
    assert info.true_shape == (384, 512) and info.crop_box == (0, 0, 512, 384) and not info.rotated
    ref = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(x, ref)
    assert (rgb.min(), rgb.max()) == (0, 255) and (x.min().item(), x.max().item()) == (-1.0, 1.0)  # 0 -> -1, 255 -> 1


def test_nearest_ratio_crop_and_antialiased_resize():
    assert target_size(640, 480) == (512, 384)  # 4:3
    assert target_size(1000, 500) == (512, 256)  # 2:1
    assert target_size(700, 400) == (512, 288)  # 1.75 -> 16:9 (1.778)
    assert target_size(480, 640) == (384, 512)  # portrait: transposed sizes
    # 700x400 to 16:9: the image is narrower than 16:9, so the height is cropped: int(700 / (512/288)) = 393 rows,
    # top = round(7 / 2) = 4 (round half to even), then resized to 288x512 with antialias
    rgb = _rgb(400, 700, 1)
    x, info = preprocess(rgb)
    assert info.crop_box == (0, 4, 700, 397) and info.true_shape == (288, 512)
    full = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    ref = F.interpolate(full[None, :, 4:397], size=(288, 512), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(x, ref)
    # a wider-than-ratio image crops columns: 1100x480 -> 4:3 region of 640 columns centred at 230
    x, info = preprocess(_rgb(480, 1100, 2), size=(512, 384))
    assert info.crop_box == (230, 0, 870, 480) and tuple(x.shape) == (3, 384, 512)


def test_portrait_rotation_round_trip(tmp_path):
    from PIL import Image

    rgb = _rgb(512, 384, 3)  # H > W
    x, info = preprocess(rgb)
    assert info.rotated and info.true_shape == (384, 512) and info.orig_size == (384, 512)
    back = to_original_orientation(x, info)
    ref = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(back, ref)
    hwc = x.permute(1, 2, 0).numpy()
    assert np.array_equal(to_original_orientation(hwc, info, channels_last=True), ref.permute(1, 2, 0).numpy())
    # rotation is clockwise: the original bottom-left pixel becomes the top-left one
    assert torch.equal(x[:, 0, 0], ref[:, -1, 0])
    xn, infon = preprocess(rgb, portrait="native")
    assert not infon.rotated and infon.true_shape == (512, 384) and torch.equal(xn, ref)
    # load_images: every view at the first view's size
    for i, (h, w) in enumerate([(384, 512), (480, 640), (600, 800)]):
        Image.fromarray(_rgb(h, w, i)).save(tmp_path / f"v{i}.png")
    imgs, infos = load_images([tmp_path / f"v{i}.png" for i in range(3)])
    assert tuple(imgs.shape) == (3, 3, 384, 512) and [i.true_shape for i in infos] == [(384, 512)] * 3
    assert (512, 384) in ALLOWED_SIZES_512


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    """An offline SigLIP-architecture text model with a word-level tokenizer (no sentencepiece needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipTextConfig, SiglipTextModel

    words = ["<pad>", "<unk>", "this", "is", "a", "photo", "of", "chair.", "wall.", "table.", "lamp."]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", model_max_length=64)
    cfg = SiglipTextConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    net = SiglipTextModel(cfg).eval()
    d = tmp_path_factory.mktemp("siglip")
    tok.save_pretrained(d)
    net.save_pretrained(d)
    return str(d), tok, net


def test_text_embeddings_match_model_and_cache(tiny_siglip, tmp_path, monkeypatch):
    path, tok, net = tiny_siglip
    names = ["chair", "wall", "table"]
    T._text_model.cache_clear()
    emb = T.encode_classes(names, path, cache_dir=tmp_path)
    ids = tok([T.TEMPLATE.format(n) for n in names], padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        ref = net(input_ids=ids["input_ids"]).pooler_output
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert torch.allclose(emb, ref, atol=1e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    # second call: from the cache, the text model is not loaded again
    T._text_model.cache_clear()
    monkeypatch.setattr(T, "_text_model", lambda *a, **k: pytest.fail("text model loaded despite the cache"))
    assert torch.equal(T.encode_classes(names, path, cache_dir=tmp_path), emb)
    # another class list is another cache entry (and needs the model)
    with pytest.raises(pytest.fail.Exception):
        T.encode_classes(["chair", "lamp"], path, cache_dir=tmp_path)


def test_precomputed_embeddings_and_errors(tmp_path):
    e = torch.randn(3, 8)
    np.save(tmp_path / "e.npy", e.numpy())
    assert torch.equal(T.encode_classes(["a", "b", "c"], embeddings=tmp_path / "e.npy"), e)
    T.save_embeddings(tmp_path / "e.pt", e, ["a", "b", "c"])
    assert torch.equal(T.load_embeddings(tmp_path / "e.pt", ["a", "b", "c"]), e)
    with pytest.raises(InputError, match="2 classes"):
        T.load_embeddings(tmp_path / "e.npy", ["a", "b"])
    with pytest.raises(InputError, match="another class list"):
        T.load_embeddings(tmp_path / "e.pt", ["a", "b", "x"])
    with pytest.raises(InputError, match="not found"):
        T.load_embeddings(tmp_path / "missing.npy")
    with pytest.raises(InputError) as err:
        T.encode_classes(["a"], str(tmp_path / "no-such-model"), cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "offline" in str(err.value)


def test_panlift_vocabulary_and_mapping():
    prompts, ids = T.panlift_vocabulary()
    assert ids == list(range(1, 22)) and len(prompts) == 21
    assert T.map_to_panlift(PANLIFT_CLASSES[1:]) == list(range(1, 22))  # every PanLift name maps to itself
    assert T.map_to_panlift(prompts) == ids
    assert T.map_to_panlift(["Office Chair", "kitchen cabinet", "tv", "bookshelf", "whiteboard"]) == [
        PANLIFT_CLASSES.index(c) for c in ("chair", "cabinet", "television", "shelves", "other")]
    assert T.map_to_panlift(["whiteboard"], unknown=0) == [0]
