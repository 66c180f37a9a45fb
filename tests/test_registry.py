"""Registry: every kind registers and looks up; duplicates and unknown names fail clearly."""
import pytest

from xraygpt.common.registry import KINDS, Registry, RegistryError


@pytest.mark.parametrize("kind", ["builder", "model", "processor", "task", "runner", "lr_scheduler"])
def test_register_and_lookup_every_kind(kind):
    reg = Registry()
    register = getattr(reg, f"register_{kind}")
    lookup = getattr(reg, f"get_{kind}_class")

    @register("thing_one")
    class ThingOne:
        pass

    assert lookup("thing_one") is ThingOne
    assert reg.names(kind) == ["thing_one"]


def test_aliases_point_to_the_same_class():
    reg = Registry()

    @reg.register_model("mini_gpt4", aliases=("xraygpt",))
    class MiniGPT4:
        pass

    assert reg.get_model_class("xraygpt") is reg.get_model_class("mini_gpt4") is MiniGPT4


def test_duplicate_registration_names_both_classes():
    reg = Registry()

    @reg.register_model("mini_gpt4")
    class First:
        pass

    with pytest.raises(RegistryError) as err:

        @reg.register_model("mini_gpt4")
        class Second:
            pass

    msg = str(err.value)
    assert "First" in msg and "Second" in msg and "mini_gpt4" in msg


def test_unknown_name_suggests_closest_and_lists_registered():
    reg = Registry()
    for name in ("mini_gpt4", "blip2"):
        reg.register_model(name)(type(name, (), {}))
    with pytest.raises(RegistryError) as err:
        reg.get_model_class("mini_gpt")
    msg = str(err.value)
    assert "unknown model 'mini_gpt'" in msg
    assert "did you mean 'mini_gpt4'" in msg
    assert "registered: blip2, mini_gpt4" in msg


def test_unknown_name_without_close_match_still_lists():
    reg = Registry()
    reg.register_task("image_text_pretrain")(object)
    with pytest.raises(RegistryError) as err:
        reg.get_task_class("zzz")
    assert "did you mean" not in str(err.value)
    assert "image_text_pretrain" in str(err.value)


def test_paths_register_and_reject_conflicts():
    reg = Registry()
    reg.register_path("library_root", "/a")
    assert reg.get_path("library_root") == "/a"
    reg.register_path("library_root", "/a")  # same value is fine
    with pytest.raises(RegistryError):
        reg.register_path("library_root", "/b")
    with pytest.raises(RegistryError, match="did you mean 'library_root'"):
        reg.get_path("library_rot")


def test_importing_package_registers_into_global_registry():
    import xraygpt
    from xraygpt.common.registry import registry

    assert registry.get_path("library_root").endswith("xraygpt")
    assert set(KINDS) <= set(registry._tables)
    assert xraygpt.registry is registry


def test_third_party_class_can_register_before_building():
    from xraygpt.common.registry import registry

    @registry.register_processor("my_plugin_processor")
    class MyProcessor:
        pass

    try:
        assert registry.get_processor_class("my_plugin_processor") is MyProcessor
    finally:
        registry.unregister("processor", "my_plugin_processor")
