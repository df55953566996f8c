import json

from lightsr.cli import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "dlgsanet_light" in out and "760,776" in out and "849,136" in out and "1,044,800" in out


def test_models_json(capsys):
    assert main(["models", "--json", "--no-peers"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"}
    assert rows["lamnet"]["params"] == {"2": 828_364, "3": 837_019, "4": 849_136}


def test_models_options(capsys):
    assert main(["models", "--options", "lamnet"]) == 0
    out = capsys.readouterr().out
    assert "csm = 'csm'" in out and "num_blocks = 6" in out


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "models" in capsys.readouterr().out


def test_a_named_command_loads_only_its_own_module():
    """`lightsr upscale ...` builds the upscale parser alone: the other commands' modules, the
    evaluation code and the training config parser (PyYAML) stay unloaded, start-up time saved."""
    import subprocess
    import sys

    code = ("import sys; from lightsr.cli import build_parser; build_parser('upscale'); "
            "import lightsr.train.distributed; "
            "print([m for m in ('yaml', 'lightsr.evaluation', 'lightsr.cli.eval', 'lightsr.cli.train', "
            "'lightsr.train.config') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_global_option_before_a_command_and_unknown_commands(capsys):
    assert main(["--debug", "models", "--json", "--no-peers"]) == 0
    capsys.readouterr()
    try:
        main(["upscal"])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'upscal'" in err and "'upscale'" in err and "'train'" in err


def test_train_package_names_load_on_use():
    from lightsr.train import ConfigError, load_config
    import lightsr.train as train_pkg

    assert callable(load_config) and issubclass(ConfigError, Exception)
    try:
        train_pkg.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
