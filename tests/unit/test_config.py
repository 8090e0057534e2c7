"""Configuration layers and the values they refuse."""
import pytest

from golden_ami import config
from golden_ami.errors import UserError


def test_every_os_data_file_loads_for_both_targets(state_dir):
    assert config.available_os() == ["al2023", "debian12", "ubuntu2204", "ubuntu2404"]
    for name in config.available_os():
        for target in config.TARGETS:
            cfg = config.resolve(name, target)
            assert cfg.target_os.login_user
            assert cfg.os.name == name


@pytest.mark.parametrize("os_name, target, needle", [
    ("windows", "local", "unknown --os 'windows'"),
    ("debian12", "gcp", "unknown --target 'gcp'"),
])
def test_unknown_os_or_target_is_one_actionable_line(state_dir, os_name, target, needle):
    with pytest.raises(UserError) as err:
        config.resolve(os_name, target)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_layers_apply_in_order(state_dir, tmp_path):
    user = tmp_path / "golden-ami.yaml"
    user.write_text("local:\n  memory_mb: 2048\n  cpus: 1\nper_os:\n  debian12:\n    local:\n      cpus: 3\n")
    cfg = config.resolve("debian12", "local", str(user), overrides={"profile": "baseline"})
    assert cfg.settings.local.memory_mb == 2048  # user file over defaults
    assert cfg.settings.local.cpus == 3  # per_os over the general user setting
    assert cfg.settings.profile == "baseline"  # flags over everything (the default is cis-level2-server)
    assert cfg.settings.local.disk_size_mb == 4096  # defaults where nobody spoke
    other = config.resolve("al2023", "local", str(user))
    assert other.settings.local.cpus == 1


@pytest.mark.parametrize("yaml_text, key", [
    ("local:\n  debian_mirror: 'http://x/$(reboot)'\n", "local.debian_mirror"),
    ("aws:\n  region: 'us-east-1; rm -rf /'\n", "aws.region"),
    ("local:\n  acclerator: kvm\n", "local.acclerator"),
    ("local:\n  memory_mb: lots\n", "local.memory_mb"),
])
def test_bad_values_are_refused_with_the_key_named(state_dir, tmp_path, yaml_text, key):
    user = tmp_path / "bad.yaml"
    user.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        config.resolve("debian12", "local", str(user))
    message = str(err.value)
    assert key in message and str(user) in message
    assert "\n" not in message


def test_broken_yaml_names_the_file(state_dir, tmp_path):
    user = tmp_path / "broken.yaml"
    user.write_text("local: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.resolve("debian12", "local", str(user))


def test_missing_config_file(state_dir):
    with pytest.raises(UserError, match="no such file"):
        config.resolve("debian12", "local", "/nonexistent/golden-ami.yaml")


def test_os_data_refuses_unsafe_values(state_dir, tmp_path, monkeypatch):
    # A per-OS data file is data too: a login user with shell syntax in it never loads.
    os_dir = tmp_path / "os"
    os_dir.mkdir()
    text = (config.paths.OS_DATA_DIR / "debian12.yaml").read_text().replace("login_user: debian", "login_user: '$(id)'")
    (os_dir / "debian12.yaml").write_text(text)
    monkeypatch.setattr(config.paths, "OS_DATA_DIR", os_dir)
    with pytest.raises(UserError, match="login_user"):
        config.resolve("debian12", "local")


def test_state_dir_comes_from_the_environment(state_dir):
    assert config.resolve("debian12").state_dir == state_dir
