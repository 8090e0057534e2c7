"""controls_for reads the catalogue as validated once per file version, without a copy of its own
(issue 11 item 5): what it hands out must still be the caller's alone."""
from golden_ami import catalogue, config, yamlfiles


def _a_list_param(chosen):
    control = next(c for c in chosen.controls if any(isinstance(v, list) for v in c.params.values()))
    return control, next(name for name, value in control.params.items() if isinstance(value, list))


def test_what_one_caller_edits_no_later_caller_sees(state_dir):
    yamlfiles.cache_clear()
    cfg = config.resolve("debian12", "local")
    first = catalogue.controls_for(cfg)
    control, name = _a_list_param(first)
    pristine = list(control.params[name])
    control.params[name].append("edited")
    control.params["added"] = 1
    control.refs["debian12"] = "edited"
    for spec in catalogue.load_catalogue():  # load_catalogue's copies are the caller's too
        spec.params.clear()
        spec.refs.clear()
    again = catalogue.controls_for(cfg).by_id()[control.id]
    assert again.params[name] == pristine and "added" not in again.params
    assert again.refs.get("debian12") != "edited"
    assert catalogue.controls_for(cfg).as_dict() == catalogue.controls_for(cfg).as_dict()
    assert [c.as_dict() for c in catalogue.controls_for(cfg).controls if c.id != control.id] == \
        [c.as_dict() for c in first.controls if c.id != control.id]
