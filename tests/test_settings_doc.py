"""The README lists every setting, exactly as the settings model defines it."""

from pathlib import Path

from worker.settings import Settings, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_generated_from_the_model():
    text = README.read_text()
    block = text.split("<!-- settings:begin -->")[1].split("<!-- settings:end -->")[0]
    for var, default, desc in settings_table():
        row = f"| `{var}` | {default} | {desc} |"
        assert row in block, f"README is stale for {var}: run python -m worker.settings --markdown"
    assert block.count("| `SLOTWATCH_") == len(settings_table())


def test_nested_env_variables_reach_the_model(monkeypatch):
    monkeypatch.setenv("SLOTWATCH_MODEL__SLOTS", "64")
    monkeypatch.setenv("SLOTWATCH_KAFKA__SECURITY__PROTOCOL", "SSL")
    s = Settings.load()
    assert s.model.slots == 64 and s.kafka.security.protocol == "SSL"
