"""Config loading: every preset validates; each kind of error is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import CONFIG_DIR, ConfigError, derive, load_config, save_resolved, to_yaml

ALL_YAML = sorted(CONFIG_DIR.glob("*.yaml"))


def test_presets_exist():
    names = {p.stem for p in ALL_YAML}
    assert {"quickstart", "debug", "arxiv_megabyte", "arxiv_transformer"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.name)
def test_every_yaml_loads_and_validates(path: Path, sp_model, byte_dataset):
    overrides = []
    if "vocab: sentencepiece" in path.read_text():
        overrides.append(f"model.tokenizer={sp_model}")  # the preset names a file made by a command
    if "source: shards" in path.read_text():  # ... or a dataset made by a command
        with pytest.raises(ConfigError, match=r"data.datasets\[0\]: no manifest.json"):
            load_config(path, overrides)
        overrides.append(f"data.datasets=[{byte_dataset}]")
    cfg = load_config(path, overrides)
    d = derive(cfg, world_size=cfg.parallel.tensor_parallel)
    assert d.global_batch_units == d.global_batch_sequences * cfg.model.seq_len


def test_arxiv_presets_match_the_paper():
    mb = load_config(CONFIG_DIR / "arxiv_megabyte.yaml").model
    assert (mb.seq_len, mb.patch_size) == (8192, 8)
    assert (mb.global_model.dim, mb.global_model.layers) == (2048, 14)
    assert (mb.local_model.dim, mb.local_model.layers) == (1024, 18)
    tf = load_config(CONFIG_DIR / "arxiv_transformer.yaml").model
    assert (tf.arch, tf.seq_len, tf.global_model.dim, tf.global_model.layers) == (
        "transformer", 1024, 1024, 22)


CASES = [
    (["model.not_a_key=1"], "model.not_a_key: unknown key"),
    (["trian.max_steps=3"], "trian: unknown key"),
    (["model.seq_len=abc"], "model.seq_len: wrong type"),
    (["train.max_steps=1.5"], "train.max_steps: wrong type"),
    (["model.seq_len=100"], "model.seq_len: 100 is not a multiple of model.patch_size=8"),
    (["model.global_model.heads=3"], "model.global_model.heads: 3 heads do not divide"),
    (["model.local_model.heads=5"], "model.local_model.heads: 5 heads do not divide"),
    (["model.arch=lstm"], "model.arch: must be 'megabyte' or 'transformer'"),
    (["model.vocab=sentencepiece", "model.arch=transformer"], "model.tokenizer: required"),
    (["model.cross_patch_window=9"], "model.cross_patch_window: must be in [0, patch_size=8]"),
    (["optim.lr=-1"], "optim.lr: must be positive"),
    (["parallel.tensor_parallel=3"], "parallel.tensor_parallel: 3 does not divide"),
    (["model.dropout=1.5"], "model.dropout: must be in [0, 1)"),
    (["model.init=xavier"], "model.init: must be one of paper, scaled, zero_gl, ln_gain"),
    (["max_steps"], "is not of the form key=value"),
    (["data.source=files", "data.path=/nonexistent/dir"], "data.path: not a directory"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[1][:30] for c in CASES])
def test_config_errors_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "quickstart.yaml", overrides)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_key_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: megabyte\n  patch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"model\.patch_sise: unknown key"):
        load_config(bad)


def test_wrong_type_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  micro_batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: wrong type 'lots'"):
        load_config(bad)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_derived_batch_algebra():
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["train.micro_batch_size=2",
                                                  "train.global_batch_bytes=1024",
                                                  "parallel.tensor_parallel=2"])
    d = derive(cfg, world_size=8)  # TP 2 x DP 4
    assert d.data_parallel == 4
    assert d.grad_accum_steps == 1024 // (2 * 4 * 64)
    assert d.global_batch_units == 1024
    with pytest.raises(ConfigError, match="train.global_batch_bytes"):
        derive(load_config(CONFIG_DIR / "debug.yaml", ["train.global_batch_bytes=1000"]), 1)
    with pytest.raises(ConfigError, match="does not divide the world size"):
        derive(cfg, world_size=3)


def test_resolved_config_roundtrips(tmp_path):
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["model.seq_len=128"])
    path = save_resolved(cfg, tmp_path, derive(cfg))
    again = load_config(path)
    assert to_yaml(again) == to_yaml(cfg)
    assert "# derived:" in path.read_text()


@pytest.mark.parametrize("typed,expected", [("4:00:00", "4:00:00"), ("30:00", "30:00"),
                                            ("2-00:00:00", "2-00:00:00"), ("90", "90")])
def test_times_with_colons_stay_as_typed(tmp_path, typed, expected):
    """YAML 1.1 reads 4:00:00 as the base-60 int 14400, which a str field then holds as
    "14400" (Slurm: minutes, i.e. 10 days). In a file and in an override alike."""
    assert load_config(CONFIG_DIR / "debug.yaml", [f"slurm.time={typed}"]).slurm.time == expected
    path = tmp_path / "t.yaml"
    path.write_text(f"slurm:\n  time: {typed}\n")
    assert load_config(path).slurm.time == expected
    with pytest.raises(ConfigError, match="train.max_steps: wrong type '1:00'"):
        load_config(CONFIG_DIR / "debug.yaml", ["train.max_steps=1:00"])  # no longer 60


def test_an_override_that_yaml_would_cut_at_a_comment_is_refused():
    with pytest.raises(ConfigError, match="' #' starts a YAML comment, which would drop '#b'"):
        load_config(CONFIG_DIR / "debug.yaml", ["slurm.job_name=a #b"])
    assert load_config(CONFIG_DIR / "debug.yaml", ["slurm.job_name='a #b'"]).slurm.job_name == "a #b"
    assert load_config(CONFIG_DIR / "debug.yaml", ["slurm.job_name=a#b"]).slurm.job_name == "a#b"
    quoted = load_config(CONFIG_DIR / "debug.yaml", ["slurm.extra_directives=['--comment=run #1']"])
    assert quoted.slurm.extra_directives == ["--comment=run #1"]


def test_a_config_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level, not a list"):
        load_config(path)


@pytest.mark.parametrize("overrides,expected", [
    (["optim.eps=-1"], "optim.eps: must be positive"),
    (["optim.decay_power=-1"], "optim.decay_power: must be >= 0"),
    (["model.conv_encoder=true", "model.conv_kernel_sizes=[]"],
     "model.conv_kernel_sizes: model.conv_encoder=true needs at least one kernel size"),
    (["train.compile=true", "train.compile_backend=bogus"],
     "train.compile_backend: unknown torch.compile backend 'bogus'"),
])
def test_values_that_would_misbehave_later_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "debug.yaml", overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_documented_and_debug_compile_backends_are_accepted():
    for backend in ("inductor", "aot_eager", "eager"):
        load_config(CONFIG_DIR / "debug.yaml", ["train.compile=true", f"train.compile_backend={backend}"])


def test_run_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="run_dir: .* exists and is not a directory"):
        load_config(CONFIG_DIR / "debug.yaml", [f"run_dir={tmp_path / 'f'}"])


def test_a_relative_tokenizer_path_is_saved_absolute(tmp_path, monkeypatch, sp_model):
    """A run's saved config must find its tokenizer from any working directory (evaluate,
    generate and export run elsewhere): relative paths are resolved where the config is loaded."""
    monkeypatch.chdir(sp_model.parent)
    cfg = load_config(CONFIG_DIR / "debug_subword.yaml", [f"model.tokenizer={sp_model.name}"])
    assert cfg.model.tokenizer == str(sp_model.resolve())
    save_resolved(cfg, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "config.yaml").model.tokenizer == str(sp_model.resolve())


def test_a_section_overridden_by_a_scalar_names_the_section():
    with pytest.raises(ConfigError, match=r"model.global_model: Merge error") as info:
        load_config(CONFIG_DIR / "debug.yaml", ["model.global_model=5"])
    assert "<root>" not in str(info.value)


def test_datasets_with_another_source_are_refused(byte_dataset):
    """They used to be ignored: a media preset without data.source=shards trained on the
    stdlib's Python source instead."""
    with pytest.raises(ConfigError, match="data.datasets: set, but data.source=stdlib does not"):
        load_config(CONFIG_DIR / "debug.yaml", [f"data.datasets=[{byte_dataset}]"])
    load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{byte_dataset}]"])
