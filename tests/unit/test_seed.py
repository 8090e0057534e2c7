"""The NoCloud seed: its own keys always, an application team's extra cloud-config beside them."""
import pytest
import yaml

from golden_ami.targets.local.seed import SEED_KEYS, write_seed_files

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDayTwo test"


def _user_data(tmp_path, extra=None) -> dict:
    _, user = write_seed_files(tmp_path / "seed", "iid-1", "host", "debian", KEY, extra)
    text = user.read_text()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_without_extra_user_data_the_seed_is_only_its_own_keys(tmp_path):
    assert set(_user_data(tmp_path)) == set(SEED_KEYS)


def test_extra_user_data_is_added_literally_beside_the_seed_keys(tmp_path):
    extra = {"write_files": [{"path": "/etc/nftables.d/app.nft", "content": "tcp dport 8080 accept\n"}],
             "runcmd": [["systemctl", "reload", "nftables"], "echo $(id -u); rm -rf /"]}
    data = _user_data(tmp_path, extra)
    assert data["write_files"] == extra["write_files"] and data["runcmd"] == extra["runcmd"]
    assert data["ssh_authorized_keys"] == [KEY] and data["ssh_pwauth"] is False


@pytest.mark.parametrize("key", ["ssh_authorized_keys", "system_info", "ssh_pwauth"])
def test_extra_user_data_may_not_replace_a_seed_key(tmp_path, key):
    with pytest.raises(ValueError, match=key):
        write_seed_files(tmp_path / "seed", "iid-1", "host", "debian", KEY, {key: True})
