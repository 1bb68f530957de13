"""Test-wide setup. Hypothesis profiles: `default` for CI; `mutation` (HYPOTHESIS_PROFILE=mutation) skips shrinking, to
check quickly that a deliberately broken engine makes the property tests fail."""

import os

import pytest
from hypothesis import Phase, settings

from lake_assets.core.settings import current_settings
from tests.aws_fixtures import applied, filters_plan, moto_endpoint, pg_server, tf_env  # noqa: F401  (shared, session-scoped)

settings.register_profile("default", settings.get_profile("default"))
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _settings_read_afresh(monkeypatch):
    """The lake reads its settings once per process; a test that sets LAKE_* variables gets them.
    Tests land complete files: no settle time (the tests of settling pass their own)."""
    monkeypatch.setenv("LAKE_SETTLE_SECONDS", "0")
    current_settings.cache_clear()
    yield
    current_settings.cache_clear()
