import pickle

import pytest
import torch

from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.models import build, load
from rfdeploy.models.checkpoint import read_config, save_checkpoint


def test_roundtrip_is_bit_exact(tmp_path, tiny_det_cfg, tiny_rank_cfg):
    for cfg in (tiny_det_cfg, tiny_rank_cfg):
        m = build(cfg)
        path = save_checkpoint(m, tmp_path / f"{cfg.name}.safetensors")
        back = load(path)
        assert back.cfg == cfg
        a, b = m.state_dict(), back.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path, tiny_det_cfg):
    from safetensors import safe_open

    m = build(tiny_det_cfg)
    blobs = set()
    for i in range(4):  # safetensors' own metadata order varies from call to call
        p = save_checkpoint(m, tmp_path / f"m{i}.safetensors", dtype=torch.float16, extra_metadata={"a": "1", "b": "2"})
        blobs.add(p.read_bytes())
        with safe_open(str(p), "pt") as f:  # still a valid safetensors file for the reference reader
            assert f.metadata()["a"] == "1" and torch.equal(f.get_tensor("cls_head.pred.weight"),
                                                           m.cls_head.pred.weight.half())
    assert len(blobs) == 1


def test_plain_state_dict_with_preset_and_sidecar(tmp_path, tiny_det_cfg):
    m = build(tiny_det_cfg)
    p = tmp_path / "plain.pt"
    torch.save(m.state_dict(), p)
    with pytest.raises(ModelFileError, match="carries no model config"):
        load(p)
    (tmp_path / "plain.pt.json").write_text(__import__("json").dumps(tiny_det_cfg.to_dict()))
    back = load(p)
    assert torch.equal(back.cls_head.pred.weight, m.cls_head.pred.weight)


def test_mismatched_checkpoint_names_keys(tmp_path, tiny_det_cfg):
    from rfdeploy.models import detector_config

    m = build(tiny_det_cfg)
    p = tmp_path / "m.pt"
    sd = m.state_dict()
    sd.pop("cls_head.pred.bias")
    sd["something.extra"] = torch.zeros(1)
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match="missing keys.*cls_head.pred.bias.*unexpected keys.*something.extra"):
        load(p, config=tiny_det_cfg)
    other = detector_config("refineface_r18", fpn_channels=32, head_channels=32)
    torch.save(m.state_dict(), p)
    with pytest.raises(ModelFileError, match="does not match"):
        load(p, config=other)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED','w').write('x')",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "payload": _Evil()}, p)
    with pytest.raises(ModelFileError, match="weights_only"):
        load(p, config="refineface_mbv2")
    assert not (tmp_path / "PWNED").exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ModelFileError):
        load(raw, config="refineface_mbv2")
    assert not (tmp_path / "PWNED").exists()


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelFileError):
        load(junk)
    assert read_config(junk) is None
