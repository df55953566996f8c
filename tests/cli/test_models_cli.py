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
