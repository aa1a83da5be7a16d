from pathlib import Path

import pytest
import yaml

from bertline.config import load_config, parse_overrides
from bertline.errors import UserError, find_user_error
from pipeline.config import PrepareConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_dotted_overrides_are_typed_and_separated_from_beam_flags():
    overrides, rest = parse_overrides(
        ["--pairs.dupe_factor", "3", "--runner=FnApiRunner", "--masking.whole_word=true", "--seed", "7", "--input", "x"],
        PrepareConfig,
    )
    assert overrides == {"pairs.dupe_factor": "3", "masking.whole_word": "true", "seed": "7"}
    assert rest == ["--runner=FnApiRunner", "--input", "x"]
    config = load_config(PrepareConfig, None, overrides)
    assert config.pairs.dupe_factor == 3 and config.masking.whole_word and config.seed == 7


@pytest.mark.parametrize("overrides,fragment", [
    ({"pairs.dupe_factr": 3}, "unknown config key 'pairs.dupe_factr'"),
    ({"pairs.max_seq_length": 4}, "config key 'pairs.max_seq_length'"),
    ({"masking.mask_token_prob": 0.95}, "must not exceed 1"),
    ({"tokenizer.kind": "wordpiece"}, "needs tokenizer.path"),
    ({"tokenizer.cjk_characters": True, "tokenizer.model_type": "bpe"}, "tokenizer.cjk_characters shapes a SentencePiece vocabulary"),
    ({"tokenizer.cjk_characters": True, "tokenizer.kind": "wordpiece", "tokenizer.path": "v.txt"}, "set tokenizer.kind=sentencepiece_train"),
])
def test_bad_config_is_one_sentence_naming_the_key(overrides, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")) as caught:
        load_config(PrepareConfig, None, overrides)
    assert "\n" not in str(caught.value)


def test_string_fields_keep_the_text_and_bad_values_are_one_sentence():
    overrides, _ = parse_overrides(["--tokenizer.path", "2024", "--input.text_field=@body"], PrepareConfig)
    config = load_config(PrepareConfig, None, overrides)
    assert config.tokenizer.path == "2024" and config.input.text_field == "@body"
    with pytest.raises(UserError, match=r"the value '\*x' of --pairs.dupe_factor is not a valid"):
        load_config(PrepareConfig, None, {"pairs.dupe_factor": "*x"})


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(PrepareConfig, tmp_path / "nope.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(PrepareConfig, bad, {})


def test_every_yaml_in_configs_pipeline_loads():
    files = sorted((CONFIGS / "pipeline").glob("*.yaml"))
    assert files
    for path in files:
        config = load_config(PrepareConfig, path, {})
        assert config == PrepareConfig.model_validate(yaml.safe_load(path.read_text()))


def test_every_config_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from walk(annotation)
            else:
                yield name, field.description
    undocumented = [name for name, description in walk(PrepareConfig) if not description]
    assert undocumented == []


def test_user_error_survives_a_runner_wrapping():
    wrapped = RuntimeError("Traceback ...\nbertline.errors.UserError: input file x.gz is truncated [while running 'ReadCorpus/ReadDocuments']")
    assert find_user_error(wrapped) == "input file x.gz is truncated"


def test_run_command_prints_one_sentence_and_the_error_exit_code(capsys):
    from bertline.errors import TrainingDiverged, run_command

    def diverges() -> int:
        raise TrainingDiverged("the loss became nan at step 3")

    assert run_command("bertline train", diverges) == 3
    assert capsys.readouterr().err == "bertline train: error: the loss became nan at step 3\n"
    assert run_command("bertline prepare", lambda: (_ for _ in ()).throw(UserError("bad input x"))) == 2
