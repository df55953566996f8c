"""Config schema: every paper recipe validates and states the paper's numbers; mistakes name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightsr.train.config import ConfigError, apply_overrides, load_config, parse_config, parse_value

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

MINIMAL = {
    "name": "t",
    "scale": 2,
    "network_g": {"type": "dlgsanet_tiny"},
    "datasets": {"train": {"type": "HRImageDataset", "dataroot_gt": "hr", "lq_size": 16, "batch_size": 4}},
    "train": {"total_iter": 10},
}


def _raw(**changes):
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    return apply_overrides(raw, [f"{k}={v}" for k, v in changes.items()])


def test_minimal_config_defaults():
    cfg = parse_config(_raw())
    assert cfg.train.optim_g.type == "Adam" and cfg.train.optim_g.betas == [0.9, 0.99]
    assert cfg.lq_patch == 16 and cfg.per_process_batch(2) == 2 and cfg.effective_batch(2) == 4
    assert str(cfg.experiments_root()) == "experiments/t"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.total_iters=5", r"train\.total_iters: unknown key; did you mean 'total_iter'\?"),
        ("datasets.train.gt_sise=96", r"datasets\.train\.gt_sise: unknown key; did you mean 'gt_size'\?"),
        ("logger.print_frequency=5", r"logger\.print_frequency: unknown key; did you mean 'print_freq'\?"),
        ("train.total_iter=abc", r"train\.total_iter: expected int, got str 'abc'"),
        ("train.total_iter=10.5", r"train\.total_iter: expected int, got float 10\.5"),
        ("train.ema_decay=true", r"train\.ema_decay: expected float, got bool"),
        ("train.optim_g.type=Adamw", r"train\.optim_g\.type: expected 'Adam' \| 'AdamW' \| 'SGD'"),
        ("train.optim_g.betas=0.9", r"train\.optim_g\.betas: expected list of float"),
        ("train.optim_g.betas=[0.9,x]", r"train\.optim_g\.betas\[1\]: expected float, got str"),
        ("network_g.type=dlgsanet_tyni", r"network_g\.type: unknown model .*did you mean 'dlgsanet_tiny'\?"),
        ("network_g.grups=2", r"network_g\.grups: unknown option of dlgsanet_tiny; did you mean 'groups'\?"),
        ("network_g.dim=13", r"network_g: cannot build dlgsanet_tiny x2: .*13"),
        ("scale=5", r"scale: dlgsanet_tiny supports \[2, 3, 4\], got 5"),
        ("datasets.train.gt_size=96", r"exactly one of gt_size .* and lq_size"),
        ("datasets.train.batch_size_per_gpu=4", r"exactly one of batch_size"),
        ("datasets.tran.dataroot_gt=x", r"datasets\.tran: dataset keys are .*did you mean 'train'\?"),
        ("train.ema_decay=1.0", r"train\.ema_decay: must be in \[0, 1\)"),
        ("train.optim_g.momentum=0.9", r"momentum: only for SGD"),
        ("val.val_freq=10", r"val: given but no datasets\.val"),
        ("datasets.train.io_backend.type=lmdb", r"io_backend: only \{type: disk\}"),
        ("name=a/b", r"name: 'a/b' must be a plain folder name"),
        ("train.amp=fp32", r"train\.amp: expected 'none' \| 'bf16' \| 'fp16' \| 'auto', got str 'fp32'"),
        ("train.amp=BF16", r"train\.amp: expected 'none' \| 'bf16' \| 'fp16' \| 'auto', got str 'BF16'"),
        ("train.amp=true", r"train\.amp: expected .*, got bool True"),
        ("train.cuda_graphs=1", r"train\.cuda_graphs: expected bool, got int 1"),
        ("train.cudnn_benchmark=auto", r"train\.cudnn_benchmark: expected bool, got str 'auto'"),
    ],
)
def test_mistakes_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_raw(**dict([override.split("=", 1)])))


def test_amp_and_graph_switches():
    t = parse_config(_raw()).train
    assert (t.amp, t.cuda_graphs, t.cudnn_benchmark) == ("none", False, True)  # today's behaviour by default
    for amp in ("none", "bf16", "fp16", "auto"):
        assert parse_config(_raw(**{"train.amp": amp})).train.amp == amp
    assert parse_config(_raw(**{"train.cuda_graphs": "true"})).train.cuda_graphs is True
    with pytest.raises(ConfigError, match=r"train\.cuda_graphs: not together with train\.compile"):
        parse_config(_raw(**{"train.cuda_graphs": "true", "train.compile": "true"}))


def test_val_section_defaults_when_val_sets_exist():
    raw = _raw()
    assert parse_config(raw).val is None
    raw["datasets"]["val"] = {"type": "HRImageDataset", "dataroot_gt": "v"}
    val = parse_config(raw).val
    assert val.val_freq is None and list(val.metrics) == ["psnr", "ssim"] and val.use_ema


def test_basicsr_float_iterations_and_network_options():
    raw = _raw()
    raw["train"]["total_iter"] = 5e5  # BasicSR writes !!float 5e5
    raw["network_g"].update(groups=1, blocks=1)
    cfg = parse_config(raw)
    assert cfg.train.total_iter == 500000 and isinstance(cfg.train.total_iter, int)
    assert cfg.network_g.options == {"groups": 1, "blocks": 1}


def test_override_values_are_yaml():
    assert parse_value("8") == 8 and parse_value("1e-3") == 1e-3 and parse_value("[a, b]") == ["a", "b"]
    assert parse_value("null") is None and parse_value("true") is True and parse_value("x.png") == "x.png"
    raw = apply_overrides({"a": {"b": 1}}, ["a.c.d=2", "a.b=3"])
    assert raw == {"a": {"b": 3, "c": {"d": 2}}}
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["train.total_iter"])
    with pytest.raises(ConfigError, match="a.b is not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=1"])


def test_duplicate_keys_are_rejected(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: a\nscale: 2\nname: b\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'name' \(line 3\)"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.yaml")


# -- the shipped recipes ------------------------------------------------------------------------

PAPER = {  # family -> (LR patch, effective batch, lr, betas, weight decay, schedule)
    "dlgsanet": (48, 16, 5e-4, [0.9, 0.99], 0.0, "MultiStepLR"),
    "lamnet": (64, 64, 1e-3, [0.9, 0.99], 0.0, "MultiStepLR"),
    "lgun": (64, 16, 5e-4, [0.9, 0.999], 1e-4, "CosineAnnealingLR"),
}


def test_configs_exist_for_every_recipe():
    names = {p.stem for p in CONFIGS}
    for model in ("dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lamnet", "lamnet_large", "lgun"):
        for s in (2, 3, 4):
            assert f"{model}_x{s}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_is_valid_and_matches_its_paper(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    model = cfg.network_g.type
    family = "dlgsanet" if model.startswith("dlgsanet") else "lamnet" if model.startswith("lamnet") else model
    if not path.stem.startswith(model + "_x"):  # local (non-paper) variants are checked elsewhere
        return
    patch, batch, lr, betas, wd, sched = PAPER[family]
    t = cfg.train
    assert cfg.lq_patch == patch and cfg.train_set.batch_size == batch
    assert (t.optim_g.lr, t.optim_g.betas, t.optim_g.weight_decay) == (lr, betas, wd)
    assert t.scheduler.type == sched and t.pixel_opt.type == "L1Loss"
    assert cfg.train_set.use_hflip and cfg.train_set.use_rot
    if family == "lgun":
        assert t.scheduler.eta_min == 1e-7
        assert t.ema_decay == 0.0  # the LGUN paper states no EMA
    else:
        assert t.ema_decay == 0.999
        full = family == "dlgsanet" or cfg.scale == 2
        assert t.total_iter == (500_000 if full else 250_000)
        assert t.scheduler.milestones == ([250_000, 400_000, 450_000, 475_000] if full else
                                          [125_000, 200_000, 225_000, 237_500])
    if family == "lamnet" and cfg.scale != 2:
        assert cfg.path.pretrain_network_g.endswith(f"{model}_x2/models/net_g_latest.safetensors")
        assert cfg.path.strict_load_g is False


def test_cpu_configs_pick_bf16_by_the_cpu():
    cpu = [p for p in CONFIGS if p.stem.startswith("cpu_")]
    assert cpu and all(load_config(p).train.amp == "auto" for p in cpu)
