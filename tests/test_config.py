"""Config layering, --options parsing and run-schema validation."""
import argparse
import textwrap
from pathlib import Path

import pytest

from xraygpt.common.config import Config, ConfigError, add_config_arguments
from xraygpt.common.registry import registry
from xraygpt.common.schema import RunConfig


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def layered(tmp_path, monkeypatch):
    """A model class and a dataset builder with their own default YAMLs in tmp."""
    model_yaml = write(
        tmp_path / "defaults" / "model.yaml",
        """
        model:
          arch: cfg_test_model
          a: from_model_default
          b: from_model_default
          c: from_model_default
          d: from_model_default
          nested: {x: 1, y: 2}
        """,
    )
    data_yaml = write(
        tmp_path / "defaults" / "data.yaml",
        """
        datasets:
          cfg_test_data:
            build_info: {storage: default/storage}
            vis_processor: {train: {name: blip2_image_train, image_size: 224}}
        """,
    )

    class CfgTestModel:
        PRETRAINED_MODEL_CONFIG_DICT = {"tiny": str(model_yaml)}

    class CfgTestBuilder:
        DATASET_CONFIG_DICT = {"default": str(data_yaml)}

    registry.register_model("cfg_test_model")(CfgTestModel)
    registry.register_builder("cfg_test_data")(CfgTestBuilder)
    yield tmp_path
    registry.unregister("model", "cfg_test_model")
    registry.unregister("builder", "cfg_test_data")


def user_yaml(tmp_path, body=""):
    """The user layer; ``body`` holds extra lines of the run section, indented two spaces."""
    path = write(
        tmp_path / "user.yaml",
        """
        model:
          arch: cfg_test_model
          model_type: tiny
          b: from_user
          c: from_user
        datasets:
          cfg_test_data:
            build_info: {storage: user/storage}
        run:
          task: image_text_pretrain
          init_lr: 1.0e-4
        """,
    )
    path.write_text(path.read_text() + body)
    return path


def test_merge_order_each_layer_wins_over_the_one_before(layered):
    cfg = Config({"cfg_path": str(user_yaml(layered)), "options": ["model.c=from_options", "model.d=from_options"]})
    m = cfg.model_cfg
    assert m.a == "from_model_default"
    assert m.b == "from_user"
    assert m.c == "from_options"
    assert m.d == "from_options"
    assert cfg.datasets_cfg.cfg_test_data.build_info.storage == "user/storage"
    # dataset default keys the user did not touch survive the merge
    assert cfg.datasets_cfg.cfg_test_data.vis_processor.train.image_size == 224


def test_dataset_defaults_sit_below_user_yaml(layered):
    path = write(
        layered / "u2.yaml",
        """
        datasets:
          cfg_test_data: {}
        run: {task: t}
        """,
    )
    cfg = Config({"cfg_path": str(path)})
    assert cfg.datasets_cfg.cfg_test_data.build_info.storage == "default/storage"


def test_options_nested_lists_and_types(layered):
    cfg = Config(
        {
            "cfg_path": str(user_yaml(layered)),
            "options": [
                "model.nested.x=5",
                "run.train_splits=[train,val]",
                "run.amp=true",
                "run.init_lr=2e-4",
                "run.max_grad_norm=1.5",
            ],
        }
    )
    assert cfg.model_cfg.nested.x == 5 and cfg.model_cfg.nested.y == 2
    assert list(cfg.run_cfg.train_splits) == ["train", "val"]
    assert cfg.run_cfg.amp is True
    assert cfg.run_cfg.init_lr == pytest.approx(2e-4)
    assert cfg.run_cfg.max_grad_norm == pytest.approx(1.5)


def test_cfg_options_alias_and_argparse_flags(layered):
    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--cfg-path", str(user_yaml(layered)), "--cfg-options", "run.seed=7"])
    assert Config(args).run_cfg.seed == 7


def test_run_defaults_come_from_schema(layered):
    cfg = Config({"cfg_path": str(user_yaml(layered))})
    assert cfg.run_cfg.accum_grad_iters == 1
    assert cfg.run_cfg.on_bad_sample == "error"


def test_unknown_run_key_names_key_file_and_closest(layered):
    path = user_yaml(layered, "  init_Lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        Config({"cfg_path": str(path)})
    msg = str(err.value)
    assert "run.init_Lr" in msg and str(path) in msg and "did you mean 'init_lr'" in msg


def test_unknown_run_key_from_options_names_options(layered):
    with pytest.raises(ConfigError, match=r"run.max_epochs in --options .*did you mean 'max_epoch'"):
        Config({"cfg_path": str(user_yaml(layered)), "options": ["run.max_epochs=3"]})


def test_mistyped_run_value_names_key_and_file(layered):
    path = user_yaml(layered, "  max_epoch: five\n")
    with pytest.raises(ConfigError) as err:
        Config({"cfg_path": str(path)})
    assert "run.max_epoch" in str(err.value) and str(path) in str(err.value)


def test_choice_checked(layered):
    with pytest.raises(ConfigError, match="on_bad_sample"):
        Config({"cfg_path": str(user_yaml(layered)), "options": ["run.on_bad_sample=ignore"]})


def test_missing_required_run_value(layered):
    path = write(layered / "norun.yaml", "run:\n  init_lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"missing required value run.task"):
        Config({"cfg_path": str(path)})


def test_missing_user_config_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        Config({"cfg_path": str(missing)})


def test_missing_dataset_defaults_file_names_path(layered):
    path = write(layered / "u3.yaml", "datasets:\n  no_such_dataset: {}\nrun: {task: t}\n")
    with pytest.raises(ConfigError) as err:
        Config({"cfg_path": str(path)})
    assert "configs/datasets/no_such_dataset/defaults.yaml" in str(err.value)


def test_missing_model_default_file_names_path(layered, tmp_path):
    class Broken:
        PRETRAINED_MODEL_CONFIG_DICT = {"x": str(tmp_path / "gone.yaml")}

    registry.register_model("cfg_broken_model")(Broken)
    try:
        path = write(layered / "u4.yaml", "model: {arch: cfg_broken_model, model_type: x}\nrun: {task: t}\n")
        with pytest.raises(ConfigError, match="gone.yaml"):
            Config({"cfg_path": str(path)})
    finally:
        registry.unregister("model", "cfg_broken_model")


def test_unknown_model_type_lists_known(layered):
    with pytest.raises(ConfigError, match=r"unknown model.model_type 'tiy'.*did you mean 'tiny'"):
        Config({"cfg_path": str(user_yaml(layered)), "options": ["model.model_type=tiy"]})


def test_unknown_arch_suggests(layered):
    with pytest.raises(KeyError, match="did you mean 'cfg_test_model'"):
        Config({"cfg_path": str(user_yaml(layered)), "options": ["model.arch=cfg_test_mode"]})


def test_bad_option_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        from xraygpt.common.config import parse_options

        parse_options(["run.seed"])


def test_cfg_dir_resolver(layered):
    path = user_yaml(layered, "  output_dir: ${cfg_dir:}/out\n")
    cfg = Config({"cfg_path": str(path)})
    assert cfg.run_cfg.output_dir == f"{layered.resolve()}/out"


def test_pretty_print_and_yaml_round_trip(layered, caplog):
    import logging

    from omegaconf import OmegaConf

    cfg = Config({"cfg_path": str(user_yaml(layered))})
    with caplog.at_level(logging.INFO):
        cfg.pretty_print()
    assert "from_user" in caplog.text
    assert OmegaConf.create(cfg.to_yaml()).model.b == "from_user"


@pytest.mark.parametrize("option, message", [
    ("datasets.phantoms.build_info.storag=/x", "unknown key datasets.phantoms.build_info.storag in --options — did you mean 'storage'"),
    ("model.freeze_qfromer=true", "unknown key model.freeze_qfromer in --options — did you mean 'freeze_qformer'"),
    ("model.num_query_token=many", "bad value for model.num_query_token in --options"),
    ("datasets.phantoms.vis_processor.eval.name=blip2_image_evl", "did you mean 'blip2_image_eval'"),
    ("preprocess.vis_procesor={}", "unknown key preprocess.vis_procesor in --options — did you mean 'vis_processor'"),
    ("modle.arch=mini_gpt4", "unknown key config.modle in --options — did you mean 'model'"),
    ("run.device=tpu", "run.device 'tpu' is not a torch device"),
    ("run.accum_grad_iters=0", "run.accum_grad_iters must be >= 1, got 0 in --options"),
    ("generation.max_new_token=9", "unknown key generation.max_new_token in --options — did you mean 'max_new_tokens'"),
    ("generation.num_beams=two", "bad value for generation.num_beams in --options: expected int"),
    ("generation.top_p=1.5", "generation top_p must be in (0, 1], got 1.5"),
    ("pretrain.step=10", "unknown key pretrain.step in --options — did you mean 'steps'"),
    ("pretrain.warmup_fraction=1.0", "pretrain.warmup_fraction must be in [0, 1), got 1.0 in --options"),
])
def test_every_section_is_checked_when_the_config_loads(option, message):
    """Typos anywhere fail in Config(), before a dataset folder or weight file is opened."""
    from xraygpt.common.errors import XrayGPTError

    config = str(Path(__file__).resolve().parents[1] / "train_configs" / "phantom_tiny.yaml")
    with pytest.raises(XrayGPTError) as err:
        Config({"cfg_path": config, "options": [option]})
    assert message in str(err.value)


def test_the_loaded_config_holds_typed_sections():
    from xraygpt.datasets.builders import DatasetSection
    from xraygpt.models.model_config import MiniGPT4Config

    config = str(Path(__file__).resolve().parents[1] / "train_configs" / "phantom_tiny.yaml")
    cfg = Config({"cfg_path": config, "options": ["run.seed=7", "model.num_query_token=4"]})
    job = cfg.job
    assert isinstance(job.run, RunConfig) and job.run.seed == 7 and cfg.run_cfg.seed == 7
    assert isinstance(job.model, MiniGPT4Config) and job.model.num_query_token == 4
    assert isinstance(job.datasets["phantoms"], DatasetSection)
    assert job.datasets["phantoms"].build_info.storage == "data/phantoms"


def test_generation_and_pretrain_sections_are_typed_with_defaults_and_flags_override_them():
    from xraygpt.common.decoding_settings import CHAT_DEFAULTS, GenerationSettings
    from xraygpt.common.errors import ConfigurationError
    from xraygpt.common.schema import PretrainSection, with_flags

    config = str(Path(__file__).resolve().parents[1] / "train_configs" / "phantom_tiny.yaml")
    plain = Config({"cfg_path": config}).job
    assert plain.generation == GenerationSettings() and not plain.generation.do_sample  # greedy unless set
    assert CHAT_DEFAULTS.do_sample and CHAT_DEFAULTS.temperature == 1.0  # the chat samples
    assert plain.pretrain == PretrainSection()
    job = Config({"cfg_path": config, "options": ["generation.max_new_tokens=40", "generation.temperature=0.7",
                                                    "pretrain.steps=12", "pretrain.lr=0.01"]}).job
    assert job.generation == GenerationSettings(max_new_tokens=40, temperature=0.7)
    assert job.pretrain == PretrainSection(steps=12, lr=0.01)
    # Flags that were given win; flags left at None keep the config's value.
    assert with_flags(job.generation, max_new_tokens=8, num_beams=None) == GenerationSettings(max_new_tokens=8,
                                                                                             temperature=0.7)
    assert with_flags(job.pretrain, steps=None, batch_size=3) == PretrainSection(steps=12, lr=0.01, batch_size=3)
    with pytest.raises(ConfigurationError, match=r"pretrain.steps must be >= 1, got 0 \(from the command line\)"):
        with_flags(job.pretrain, steps=0)
    with pytest.raises(ConfigurationError, match="--temperature or config key generation.temperature"):
        with_flags(job.generation, temperature=-1.0)
