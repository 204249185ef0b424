"""`loc-unlearn <command> --help` lists the config keys the command reads with type, default and doc;
groups (data, study, attack) list their subcommands; `report` without a directory gives a usage line
that matches the real layout runs_dir/study-<name>/<hash> (issue 14)."""
import dataclasses

import pytest

from loc_unlearn import config, config_docs
from loc_unlearn.cli import main
from loc_unlearn.commands import COMMANDS, command


def test_every_config_field_has_a_docstring():
    docs = config_docs.field_docs()
    missing = []
    for cls in [config.Config] + [config._hints(config.Config)[s] for s in config._hints(config.Config)
                                  if dataclasses.is_dataclass(config._hints(config.Config)[s])]:
        todo = [cls]
        while todo:
            c = todo.pop()
            for f in dataclasses.fields(c):
                if not docs.get(c.__name__, {}).get(f.name):
                    missing.append(f"{c.__name__}.{f.name}")
                tp = config._hints(c)[f.name]
                if dataclasses.is_dataclass(tp):
                    todo.append(tp)
    assert not missing


def test_every_command_is_declared_in_the_commands_package_with_real_sections():
    sections = {f.name for f in dataclasses.fields(config.Config) if dataclasses.is_dataclass(config._hints(config.Config)[f.name])}
    for c in COMMANDS.values():
        assert c.fn.__module__.startswith("loc_unlearn.commands."), c.name
        assert set(c.sections) <= sections, (c.name, c.sections)
        for short, key in c.aliases.items():  # every short key names a real config key
            obj = config.Config()
            for part in key.split("."):
                assert hasattr(obj, part), (c.name, short, key)
                obj = getattr(obj, part)
    assert {"finetune", "unlearn", "demo", "report", "plan", "study controlled", "attack quantize"} <= set(COMMANDS)


def test_a_declared_command_is_listed_and_dispatched_with_no_other_edit(capsys, tmp_path):
    """The CLI table is generated from the declarations: one @command is all a new command needs."""
    seen = []

    @command("zz probe", "a probe command declared by a test", ["unlearn"], {"m": "unlearn.method"})
    def probe(cfg):
        seen.append(cfg.unlearn.method)

    try:
        assert main(["--help"]) == 0
        assert "zz probe" in capsys.readouterr().out
        assert main(["zz", "--help"]) == 0
        assert "probe" in capsys.readouterr().out
        with pytest.raises(SystemExit):
            main(["zz", "probe", "--help"])
        assert "unlearn.train.lr" in capsys.readouterr().out
        assert main(["zz", "probe", f"runs_dir={tmp_path}", "m=wga"]) == 0
        assert seen == ["wga"]
        assert main(["zz", "probe", "stray"]) == 2
        assert "key=value arguments only" in capsys.readouterr().err
    finally:
        COMMANDS.pop("zz probe")


def test_finetune_help_lists_keys_with_type_default_doc(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "finetune.train.lr (float, default 1e-05): Peak learning rate (AdamW)" in out
    assert "finetune.train.checkpoint_every (float" in out and "unlearn.method" not in out


@pytest.mark.parametrize("group,sub", [("data", "generate"), ("study", "controlled"), ("attack", "relearn")])
def test_groups_list_their_subcommands(capsys, group, sub):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert sub in out and "unknown command" not in out
    assert main([group, "nonsense"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_report_without_dir_gives_the_real_layout(capsys, tmp_path):
    (tmp_path / "study-controlled" / "abc123").mkdir(parents=True)
    (tmp_path / "study-controlled" / "abc123" / "results.json").write_text("{}")
    assert main(["report", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/study-controlled/<hash>" in err and str(tmp_path / "study-controlled" / "abc123") in err


def test_model_commands_list_the_device_key(capsys):
    """The top-level `device` setting (issue 20) is listed by every command that loads a model, with its
    choices; commands that load none (data generate) do not list it."""
    for name in ("finetune", "evaluate", "localize", "unlearn", "trajectory"):
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        out = capsys.readouterr().out
        assert "device (auto|cpu|cuda, default 'auto'): Where every stage runs its models" in out, name
    with pytest.raises(SystemExit):
        main(["data", "generate", "--help"])
    assert "device (" not in capsys.readouterr().out
